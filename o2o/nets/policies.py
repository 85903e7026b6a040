"""Policy heads: the tanh-squashed Gaussian of SAC, IQL's Gaussian with a tanh mean, their
log-likelihoods of dataset actions, and flow-matching policies (velocity field, loss, Euler
sampling)."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from o2o.nets.mlp import MLP, Activation, Init, default_init, dense

_LOG_2 = math.log(2.0)  # a float, not an array: importing must not start a JAX backend
# Dataset actions at exactly +-1 (clipped data, or a bang-bang behaviour policy) have
# atanh = inf; clipping to +-(1 - 1e-6) keeps the log-likelihood finite (|u| <= 7.25). RLPD
# and FQL clip their datasets to +-(1 - 1e-5) for the same reason.
ACTION_CLIP = 1.0 - 1e-6


class TanhGaussian(nn.Module):
    """State-dependent diagonal Gaussian squashed by tanh; returns (mean, log_std).

    log_std is clipped to [-20, 2] as in jaxrl/RLPD (seohongpark/fql's `Actor`: [-5, 2], its
    two heads initialised at 1/100 scale).
    """

    action_dim: int
    hidden_dims: tuple[int, ...] = (256, 256)
    log_std_min: float = -20.0
    log_std_max: float = 2.0
    activation: Activation = "relu"
    head_init_scale: float = 1.0  # of the heads' Xavier-uniform variance

    @nn.compact
    def __call__(self, observations: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = MLP(self.hidden_dims, activate_final=True, activation=self.activation)(observations)
        init = nn.initializers.variance_scaling(self.head_init_scale, "fan_avg", "uniform")
        mean = nn.Dense(self.action_dim, kernel_init=init)(x)
        log_std = nn.Dense(self.action_dim, kernel_init=init)(x)
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
    With `tanh_mean` False, `const_std` True and a small `mean_init_scale` it is the
    seohongpark/fql `Actor` its IQL uses: N(f(s), I), the last layer's initial weights scaled
    down.

    Returns (mean, log_std), log_std broadcast to the mean's shape.
    """

    action_dim: int
    hidden_dims: tuple[int, ...] = (256, 256)
    log_std_min: float = -5.0
    log_std_max: float = 2.0
    tanh_mean: bool = True
    const_std: bool = False  # log_std fixed at 0
    activation: Activation = "relu"
    mean_init_scale: float = 1.0  # of the last layer's initial variance
    log_std_init: float = 0.0
    weight_init: Init = "xavier"  # `dense`'s

    @nn.compact
    def __call__(
        self, observations: jax.Array, raw_mean: bool = False
    ) -> tuple[jax.Array, jax.Array]:
        """(mean, log_std); with `raw_mean`, the mean before its tanh (for d3rlpy's squashed
        draws from the same network, `tanh_gaussian_sample`)."""
        x = MLP(
            self.hidden_dims,
            activate_final=True,
            activation=self.activation,
            weight_init=self.weight_init,
        )(observations)
        mean = dense(self.action_dim, x.shape[-1], self.weight_init, self.mean_init_scale)(x)
        mean = jnp.tanh(mean) if self.tanh_mean and not raw_mean else mean
        if self.const_std:
            return mean, jnp.zeros_like(mean)
        log_std = self.param(
            "log_std", nn.initializers.constant(self.log_std_init), (self.action_dim,)
        )
        log_std = jnp.clip(log_std, self.log_std_min, self.log_std_max)
        return mean, jnp.broadcast_to(log_std, mean.shape)


def clipped_gaussian_sample(
    mean: jax.Array, log_std: jax.Array, key: jax.Array, deterministic: bool = False
) -> jax.Array:
    """a ~ N(mean, exp(log_std)^2) clipped to [-1, 1] (IQL's and AWAC's acting); the mean
    (clipped) if deterministic."""
    if deterministic:
        return jnp.clip(mean, -1.0, 1.0)
    noise = jax.random.normal(key, mean.shape)
    return jnp.clip(mean + jnp.exp(log_std) * noise, -1.0, 1.0)


class FlowField(nn.Module):
    """A flow policy's network: the velocity v(s, x, t) of a flow from Gaussian noise to
    actions (flow matching), or, called without `t`, a one-step map (s, z) -> action (FQL's
    distilled policy). Inputs are concatenated into one MLP, as seohongpark/fql's
    `ActorVectorField`; `t` enters as one scalar feature."""

    action_dim: int
    hidden_dims: tuple[int, ...] = (512, 512, 512, 512)
    layer_norm: bool = False
    activation: Activation = "relu"

    @nn.compact
    def __call__(
        self, observations: jax.Array, x: jax.Array, t: jax.Array | None = None
    ) -> jax.Array:
        inputs = [observations, x] if t is None else [observations, x, t[..., None]]
        h = MLP(
            self.hidden_dims,
            activate_final=True,
            layer_norm=self.layer_norm,
            activation=self.activation,
            norm_first=False,
        )(jnp.concatenate(inputs, axis=-1))
        return nn.Dense(self.action_dim, kernel_init=default_init())(h)


def flow_matching_loss(
    apply_fn, params, observations: jax.Array, actions: jax.Array, key: jax.Array
) -> jax.Array:
    """Conditional flow matching on the straight path x_t = (1 - t) x_0 + t a, x_0 ~ N(0, I),
    t ~ U[0, 1]: the squared error of v(s, x_t, t) against a - x_0, per row and action
    dimension (shape of `actions`), so callers can mask steps or weight rows."""
    key_noise, key_t = jax.random.split(key)
    x0 = jax.random.normal(key_noise, actions.shape)
    t = jax.random.uniform(key_t, actions.shape[:-1])
    return flow_matching_error(apply_fn, params, observations, actions, x0, t)


def flow_matching_error(
    apply_fn, params, observations: jax.Array, actions: jax.Array, x0: jax.Array, t: jax.Array
) -> jax.Array:
    """`flow_matching_loss` at given noise `x0` (shape of `actions`) and times `t` (without
    the action axis): FPO evaluates old and new parameters on the same draws."""
    x_t = (1.0 - t[..., None]) * x0 + t[..., None] * actions
    return (apply_fn(params, observations, x_t, t) - (actions - x0)) ** 2


def flow_actions(
    apply_fn, params, observations: jax.Array, noise: jax.Array, steps: int
) -> jax.Array:
    """Actions from integrating the velocity field from `noise` (t = 0) to t = 1 with `steps`
    Euler steps, clipped to [-1, 1] (seohongpark/fql `compute_flow_actions`)."""

    def euler(x, i):
        t = jnp.zeros_like(x[..., 0]) + (i / steps).astype(x.dtype)  # [...]: the time
        return x + apply_fn(params, observations, x, t) / steps, None

    x, _ = jax.lax.scan(euler, noise, jnp.arange(steps))
    return jnp.clip(x, -1.0, 1.0)
