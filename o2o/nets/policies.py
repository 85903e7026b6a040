"""Policy heads: the tanh-squashed Gaussian of SAC."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from o2o.nets.mlp import MLP, default_init

_LOG_2 = jnp.log(2.0)


class TanhGaussian(nn.Module):
    """State-dependent diagonal Gaussian squashed by tanh; returns (mean, log_std).

    log_std is clipped to [-20, 2] as in jaxrl/RLPD.
    """

    action_dim: int
    hidden_dims: tuple[int, ...] = (256, 256)
    log_std_min: float = -20.0
    log_std_max: float = 2.0

    @nn.compact
    def __call__(self, observations: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = MLP(self.hidden_dims, activate_final=True)(observations)
        mean = nn.Dense(self.action_dim, kernel_init=default_init())(x)
        log_std = nn.Dense(self.action_dim, kernel_init=default_init())(x)
        return mean, jnp.clip(log_std, self.log_std_min, self.log_std_max)


def tanh_gaussian_sample(
    mean: jax.Array, log_std: jax.Array, key: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """A reparameterised sample a = tanh(u), u ~ N(mean, std), and its log-density log pi(a)."""
    u = mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape)
    log_prob_u = jnp.sum(
        -0.5 * ((u - mean) / jnp.exp(log_std)) ** 2 - log_std - 0.5 * jnp.log(2 * jnp.pi), -1
    )
    # log|d tanh(u)/du| = log(1 - tanh(u)^2), written stably as 2 (log 2 - u - softplus(-2u)).
    log_det = jnp.sum(2.0 * (_LOG_2 - u - jax.nn.softplus(-2.0 * u)), -1)
    return jnp.tanh(u), log_prob_u - log_det
