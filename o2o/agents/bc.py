"""Behaviour cloning: supervised imitation of the dataset's actions, the floor every offline RL
method is measured against.

Two heads (`BCConfig.head`):
- `gaussian` (registered as `bc`): maximise log pi(a|s) under o2o's tanh-squashed Gaussian,
  as ikostrikov/jaxrl2's `BCLearner` with `distr="tanh_normal"`: lr 1e-3, hidden (256, 256).
- `deterministic` (`bc-det`): a tanh-output MLP regressed onto the actions with MSE, as
  CORL's `any_percent_bc.py` at frac 1.0 (the TD3+BC actor): lr 3e-4, hidden (256, 256),
  observations standardised by the dataset's mean and std (`normalize_observations`).
Both use batch 256 (CORL; jaxrl2's `train_offline.py`). d3rlpy's BC differs (batch 100,
lr 1e-3). Deviation: jaxrl2's default config adds dropout 0.1 and cosine lr decay; o2o uses
plain Adam, as CORL, so the learning rate does not depend on the planned step count.

BC has no critic: `q_values` returns NaN, so the Q-bias diagnostics read NaN for it.
`offline_ratio` 1.0 keeps the online phase on dataset batches: online, BC stays the offline
baseline rather than cloning its own rollouts.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import flax.struct
import gymnasium as gym
import jax
import jax.numpy as jnp
import optax
from flax.training.train_state import TrainState

from o2o.agents.base import Needs, Phase, compiled_create, register, scan_update_steps
from o2o.nets.mlp import MLP
from o2o.nets.policies import TanhGaussian, tanh_gaussian_log_prob, tanh_gaussian_sample


@dataclasses.dataclass(frozen=True)
class BCConfig:
    """BC hyperparameters; the defaults are the Gaussian head's reference recipe (jaxrl2)."""

    head: Literal["gaussian", "deterministic"] = "gaussian"
    hidden_dims: tuple[int, ...] = (256, 256)
    lr: float = 1e-3
    batch_size: int = 256
    utd_ratio: int = 1
    offline_ratio: float = 1.0
    start_steps: int = 0
    discount: float = 0.99  # unused by BC; evaluation reads it for Monte-Carlo returns
    normalize_observations: bool = False  # states standardised by the dataset's mean and std

    def __post_init__(self):
        if self.head not in ("gaussian", "deterministic"):
            raise ValueError(f"head='{self.head}' must be 'gaussian' or 'deterministic'")
        if self.utd_ratio < 1 or self.batch_size < 1:
            raise ValueError("utd_ratio and batch_size must be at least 1")


BC_GAUSSIAN = BCConfig()
BC_DETERMINISTIC = BCConfig(head="deterministic", lr=3e-4, normalize_observations=True)


class BC(flax.struct.PyTreeNode):
    actor: TrainState
    config: BCConfig = flax.struct.field(pytree_node=False)

    @classmethod
    @compiled_create
    def create(
        cls,
        config: BCConfig,
        obs_space: gym.spaces.Box,
        act_space: gym.spaces.Box,
        seed: int,
    ) -> BC:
        obs = jnp.zeros((1, *obs_space.shape), jnp.float32)
        action_dim = act_space.shape[-1]
        if config.head == "gaussian":
            actor_def = TanhGaussian(action_dim, config.hidden_dims)
        else:
            # The pre-tanh output layer of the TD3+BC / CORL BC actor; tanh is applied in `_mode`.
            actor_def = MLP((*config.hidden_dims, action_dim))
        actor = TrainState.create(
            apply_fn=actor_def.apply,
            params=actor_def.init(jax.random.key(seed), obs),
            tx=optax.adam(config.lr),
        )
        return cls(actor=actor, config=config)

    def _mode(self, params, observations: jax.Array) -> jax.Array:
        """The deterministic action: tanh of the Gaussian mean, or of the MLP output."""
        out = self.actor.apply_fn(params, observations)
        return jnp.tanh(out[0] if self.config.head == "gaussian" else out)

    def gaussian_bc_loss(self, params, batch):
        """-E_(s,a)~D[log pi(a|s)], pi the tanh-squashed Gaussian (maximum likelihood)."""
        mean, log_std = self.actor.apply_fn(params, batch["observations"])
        loss = -tanh_gaussian_log_prob(mean, log_std, batch["actions"]).mean()
        mse = jnp.mean((jnp.tanh(mean) - batch["actions"]) ** 2)
        return loss, {"bc_loss": loss, "action_mse": mse, "log_std": log_std.mean()}

    def deterministic_bc_loss(self, params, batch):
        """E_(s,a)~D[(tanh f(s) - a)^2], averaged over batch and action dimensions (CORL)."""
        loss = jnp.mean((self._mode(params, batch["observations"]) - batch["actions"]) ** 2)
        return loss, {"bc_loss": loss, "action_mse": loss}

    def bc_loss(self, params, batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        """The configured head's loss and its metrics."""
        if self.config.head == "gaussian":
            return self.gaussian_bc_loss(params, batch)
        return self.deterministic_bc_loss(params, batch)

    def update_step(self, batch: dict[str, jax.Array]) -> tuple[BC, dict[str, jax.Array]]:
        """One gradient step on one minibatch."""
        grads, info = jax.grad(self.bc_loss, has_aux=True)(self.actor.params, batch)
        return self.replace(actor=self.actor.apply_gradients(grads=grads)), info

    def update(self, batch: dict[str, jax.Array]) -> tuple[BC, dict[str, jax.Array]]:
        """One step per minibatch on the leading axis (scanned); metrics averaged over them."""
        return scan_update_steps(self, batch)

    def sample_actions(
        self, observations: jax.Array, key: jax.Array, deterministic: bool = False
    ) -> jax.Array:
        """Actions in [-1, 1]; the deterministic head ignores `key`."""
        if deterministic or self.config.head == "deterministic":
            return self._mode(self.actor.params, observations)
        mean, log_std = self.actor.apply_fn(self.actor.params, observations)
        return tanh_gaussian_sample(mean, log_std, key)[0]

    def q_values(self, observations: jax.Array, actions: jax.Array) -> jax.Array:
        """NaN of shape [batch]: BC learns no Q, so its Q-bias is undefined, not zero."""
        return jnp.full(observations.shape[:-1], jnp.nan, jnp.float32)

    def on_switch(self, config: Any = None) -> BC:
        return self

    def needs(self, phase: Phase) -> Needs:
        return Needs(normalize_observations=self.config.normalize_observations)


register("bc", BC, BC_GAUSSIAN, "behaviour cloning: tanh-Gaussian max-likelihood (jaxrl2)")
register("bc-det", BC, BC_DETERMINISTIC, "behaviour cloning: deterministic tanh MLP, MSE (CORL)")
