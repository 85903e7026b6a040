"""Flow-matching behaviour cloning: a velocity field v(s, x, t) trained to carry Gaussian noise
to the dataset's actions, acting by Euler integration from fresh noise.

A Gaussian policy fitted by maximum likelihood puts its mean between the modes of a
multi-modal action distribution, on actions the data never took; the flow covers every mode.
This is the prior of QC (best-of-N sampling), FQL (distillation target) and IDQL.

Recipe (seohongpark/fql `actor_bc_flow`, the BC flow of FQL and QC): the straight-path
conditional flow-matching loss, (512, 512, 512, 512) GELU MLP over [s, x_t, t], Adam 3e-4, batch
256, 10 Euler steps, actions clipped to [-1, 1].

Acting: `deterministic` has no mode to return for a flow (starting from zero noise lands
between symmetric modes), so every call integrates from noise drawn with `key`; evaluation
passes a fixed key, which makes it reproducible. BC has no critic: `q_values` is NaN.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import gymnasium as gym
import jax
import jax.numpy as jnp
import optax
from flax.training.train_state import TrainState

from o2o.agents.base import (
    ActsFromNoise,
    Needs,
    Phase,
    compiled_create,
    register,
    scan_update_steps,
)
from o2o.nets.mlp import Activation
from o2o.nets.policies import FlowField, flow_actions, flow_matching_loss


@dataclasses.dataclass(frozen=True)
class FlowBCConfig:
    """Flow BC hyperparameters; the defaults are FQL's BC flow."""

    hidden_dims: tuple[int, ...] = (512, 512, 512, 512)
    activation: Activation = "gelu"  # the reference's MLP default (ReLU before 2026-12-04)
    lr: float = 3e-4
    flow_steps: int = 10  # Euler steps from noise to action
    batch_size: int = 256
    utd_ratio: int = 1
    offline_ratio: float = 1.0  # online, keep cloning the dataset (the offline baseline)
    start_steps: int = 0
    discount: float = 0.99  # unused by BC; evaluation reads it for Monte-Carlo returns
    normalize_observations: bool = False

    def __post_init__(self):
        if min(self.flow_steps, self.utd_ratio, self.batch_size) < 1:
            raise ValueError("flow_steps, utd_ratio and batch_size must be at least 1")


class FlowBC(ActsFromNoise, flax.struct.PyTreeNode):
    actor: TrainState
    rng: jax.Array
    config: FlowBCConfig = flax.struct.field(pytree_node=False)
    action_dim: int = flax.struct.field(pytree_node=False, default=1)

    @classmethod
    @compiled_create
    def create(
        cls, config: FlowBCConfig, obs_space: gym.spaces.Box, act_space: gym.spaces.Box, seed: int
    ) -> FlowBC:
        obs = jnp.zeros((1, *obs_space.shape), jnp.float32)
        act = jnp.zeros((1, act_space.shape[-1]), jnp.float32)
        key_init, rng = jax.random.split(jax.random.key(seed))
        actor_def = FlowField(act.shape[-1], config.hidden_dims, activation=config.activation)
        actor = TrainState.create(
            apply_fn=actor_def.apply,
            params=actor_def.init(key_init, obs, act, jnp.zeros(1)),
            tx=optax.adam(config.lr),
        )
        return cls(actor=actor, rng=rng, config=config, action_dim=act.shape[-1])

    def bc_loss(self, params, batch, key) -> tuple[jax.Array, dict[str, jax.Array]]:
        """E ||v(s, x_t, t) - (a - x_0)||^2 / |A| on dataset actions."""
        loss = flow_matching_loss(
            self.actor.apply_fn, params, batch["observations"], batch["actions"], key
        ).mean()
        return loss, {"bc_flow_loss": loss}

    def update_step(self, batch: dict[str, jax.Array]) -> tuple[FlowBC, dict[str, jax.Array]]:
        rng, key = jax.random.split(self.rng)
        grads, info = jax.grad(self.bc_loss, has_aux=True)(self.actor.params, batch, key)
        return self.replace(actor=self.actor.apply_gradients(grads=grads), rng=rng), info

    def update(self, batch: dict[str, jax.Array]) -> tuple[FlowBC, dict[str, jax.Array]]:
        """One step per minibatch on the leading axis (scanned); metrics averaged."""
        return scan_update_steps(self, batch)

    def noise_shapes(self, batch_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        return {"normal": (*batch_shape, self.action_dim)}

    def actions_from_noise(self, observations: jax.Array, noise: dict[str, jax.Array]) -> jax.Array:
        """Integrate the flow from the noise (see the module notes on acting)."""
        return flow_actions(
            self.actor.apply_fn,
            self.actor.params,
            observations,
            noise["normal"],
            self.config.flow_steps,
        )

    def q_values(self, observations: jax.Array, actions: jax.Array) -> jax.Array:
        """NaN of shape [batch]: BC learns no Q, so its Q-bias is undefined, not zero."""
        return jnp.full(observations.shape[:-1], jnp.nan, jnp.float32)

    def on_switch(self, config: Any = None) -> FlowBC:
        return self

    def needs(self, phase: Phase) -> Needs:
        return Needs(normalize_observations=self.config.normalize_observations)


register("flow_bc", FlowBC, FlowBCConfig(), "flow-matching behaviour cloning (FQL's BC flow)")
