"""Value networks V(s) and Q(s, a), and critic ensembles: one module's parameters stacked
along a leading axis, applied by vmap.

Stacked parameters (rather than `nn.vmap` with a fixed size) let the target computation apply
only a random subset of members, as RLPD/REDQ do, without a second module definition.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training.train_state import TrainState

from o2o.nets.mlp import MLP, Activation, Init, dense


class StateValue(nn.Module):
    """V(s): an MLP over the observation, then one linear output."""

    hidden_dims: tuple[int, ...] = (256, 256)
    layer_norm: bool = False
    activation: Activation = "relu"
    norm_first: bool = True  # LayerNorm before the activation (see `MLP`)
    weight_init: Init = "xavier"  # every layer's (`dense`): jaxrl's `default_init`, or PyTorch's

    @nn.compact
    def __call__(self, *inputs: jax.Array) -> jax.Array:
        x = MLP(
            self.hidden_dims,
            activate_final=True,
            layer_norm=self.layer_norm,
            activation=self.activation,
            norm_first=self.norm_first,
            weight_init=self.weight_init,
        )(jnp.concatenate(inputs, axis=-1))
        return dense(1, x.shape[-1], self.weight_init)(x)[..., 0]


class StateActionValue(StateValue):
    """Q(s, a): the same network over the concatenated observation and action."""


def init_ensemble(module: nn.Module, key: jax.Array, num: int, *inputs: jax.Array):
    """Parameters of `num` independently initialised copies of `module`, stacked."""
    return jax.vmap(lambda k: module.init(k, *inputs))(jax.random.split(key, num))


def apply_ensemble(module: nn.Module, params, *inputs: jax.Array) -> jax.Array:
    """Outputs of every member, stacked: shape [members, ...]."""
    return jax.vmap(lambda p: module.apply(p, *inputs))(params)


@dataclasses.dataclass(frozen=True)
class EnsembleApply:
    """An ensemble TrainState's `apply_fn`: every member on the same inputs, or (`per_member`)
    member i on inputs[i]. Compares equal for equal modules (unlike a `functools.partial`); the
    optimisers' closures still make two agents' TrainStates unequal."""

    module: nn.Module
    unrolled: bool = False  # one call per member: for converters without vmap rules (ONNX)

    def __call__(self, params, *inputs: jax.Array) -> jax.Array:
        if not self.unrolled:
            return apply_ensemble(self.module, params, *inputs)
        members = jax.tree.leaves(params)[0].shape[0]
        return jnp.stack(
            [
                self.module.apply(jax.tree.map(lambda p, i=i: p[i], params), *inputs)
                for i in range(members)
            ]
        )

    def per_member(self, params, *inputs: jax.Array) -> jax.Array:
        """Member i applied to inputs[i]; inputs carry a leading member axis."""
        return jax.vmap(self.module.apply)(params, *inputs)


def ensemble_state(
    module: nn.Module,
    key: jax.Array,
    num: int,
    tx: optax.GradientTransformation,
    *inputs: jax.Array,
) -> TrainState:
    """A TrainState over `num` stacked copies of `module`, whose `apply_fn(params, *inputs)`
    returns every member's output, shape [members, ...]."""
    return TrainState.create(
        apply_fn=EnsembleApply(module),
        params=init_ensemble(module, key, num, *inputs),
        tx=tx,
    )


def subset(params, key: jax.Array, size: int):
    """A random subset of `size` members, drawn without replacement."""
    num = jax.tree.leaves(params)[0].shape[0]
    idx = jax.random.choice(key, num, (size,), replace=False)
    return jax.tree.map(lambda p: p[idx], params)


def reduce_members(qs: jax.Array, how: str) -> jax.Array:
    """Critic outputs [members, ...] reduced over members by `how`: 'mean' or 'min' (FQL's and
    QC's `q_agg`)."""
    return qs.min(0) if how == "min" else qs.mean(0)
