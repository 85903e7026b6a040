"""Policy heads: the tanh-squashed Gaussian of SAC, IQL's Gaussian with a tanh mean, and their
log-likelihoods of dataset actions."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from o2o.nets.mlp import MLP, default_init

_LOG_2 = jnp.log(2.0)
# Dataset actions at exactly +-1 (clipped data, or a bang-bang behaviour policy) have
# atanh = inf; clipping to +-(1 - 1e-6) keeps the log-likelihood finite (|u| <= 7.25). RLPD
# and FQL clip their datasets to +-(1 - 1e-5) for the same reason.
ACTION_CLIP = 1.0 - 1e-6


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
    log_prob_u = gaussian_log_prob(mean, log_std, u)
    # log|d tanh(u)/du| = log(1 - tanh(u)^2), written stably as 2 (log 2 - u - softplus(-2u)).
    log_det = jnp.sum(2.0 * (_LOG_2 - u - jax.nn.softplus(-2.0 * u)), -1)
    return jnp.tanh(u), log_prob_u - log_det


def gaussian_log_prob(mean: jax.Array, log_std: jax.Array, actions: jax.Array) -> jax.Array:
    """log N(a; mean, diag(exp(2 log_std))), summed over action dimensions."""
    z = (actions - mean) * jnp.exp(-log_std)
    return jnp.sum(-0.5 * z**2 - log_std - 0.5 * jnp.log(2 * jnp.pi), -1)


def tanh_gaussian_log_prob(mean: jax.Array, log_std: jax.Array, actions: jax.Array) -> jax.Array:
    """log pi(a) for a = tanh(u), u ~ N(mean, std): log N(atanh a) - sum log(1 - a^2).

    Actions are clipped to +-ACTION_CLIP first; log(1 - a^2) is written in terms of u, as
    2 (log 2 - u - softplus(-2u)), which stays accurate where 1 - a^2 underflows in float32.
    """
    u = jnp.arctanh(jnp.clip(actions, -ACTION_CLIP, ACTION_CLIP))
    log_prob_u = gaussian_log_prob(mean, log_std, u)
    log_det = jnp.sum(2.0 * (_LOG_2 - u - jax.nn.softplus(-2.0 * u)), -1)
    return log_prob_u - log_det


class TanhMeanGaussian(nn.Module):
    """IQL's policy: N(tanh(f(s)), diag(exp(2 log_std))), log_std a free parameter in [-5, 2].

    Returns (mean, log_std), log_std broadcast to the mean's shape.
    """

    action_dim: int
    hidden_dims: tuple[int, ...] = (256, 256)
    log_std_min: float = -5.0
    log_std_max: float = 2.0

    @nn.compact
    def __call__(self, observations: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = MLP(self.hidden_dims, activate_final=True)(observations)
        mean = jnp.tanh(nn.Dense(self.action_dim, kernel_init=default_init())(x))
        log_std = self.param("log_std", nn.initializers.zeros, (self.action_dim,))
        log_std = jnp.clip(log_std, self.log_std_min, self.log_std_max)
        return mean, jnp.broadcast_to(log_std, mean.shape)


def clipped_gaussian_sample(
    mean: jax.Array, log_std: jax.Array, key: jax.Array, deterministic: bool = False
) -> jax.Array:
    """a ~ N(mean, exp(log_std)^2) clipped to [-1, 1] (IQL's and AWAC's acting); the mean if
    deterministic."""
    if deterministic:
        return mean
    noise = jax.random.normal(key, mean.shape)
    return jnp.clip(mean + jnp.exp(log_std) * noise, -1.0, 1.0)
