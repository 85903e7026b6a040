"""Flow Q-learning (Park, Li, Levine 2025), as in seohongpark/fql `agents/fql.py`.

A flow policy is expressive but acting with it takes many integration steps, and maximising Q
through those steps backpropagates through the whole ODE. FQL keeps two actors:
- a BC flow v(s, x, t) trained only by flow matching on dataset actions (never by Q);
- a one-step policy mu(s, z), trained to maximise Q while staying close to what the BC flow
  makes of the same noise z: loss alpha * ||mu(s, z) - flow(s, z)||^2 - Q(s, mu(s, z)).
The one-step policy acts, and gives the next actions of the TD target. alpha sets how far the
policy may leave the data's support: the one hyperparameter the reference tunes per task.

Recipe (`agents/fql.py: get_config`): (512, 512, 512, 512) GELU MLPs for both actors and the
critic, LayerNorm (after each activation) in the critic only, 2 critics reduced by their mean
in the target (`q_agg='mean'`; `min` for some tasks) and always by their mean in the actor's
objective, alpha 10, 10 Euler steps for the BC flow, Q loss not normalised
(`normalize_q_loss=True` scales it by 1 / mean |Q|, the README's advice for new
environments), lr 3e-4, batch 256, gamma 0.99,
tau 0.005. Actions are clipped to [-1, 1] where they act or Q is evaluated (the BC flow's
output always); the distillation loss takes the one-step policy's output unclipped. The TD
loss is the mean over critics and rows.

Presets: `default` for every task but OGBench manipulation (the reference's D4RL AntMaze
commands keep these defaults, alpha 10, 3 on the large mazes; it has no locomotion recipe);
`manipulation` alpha 300 (cube, scene) and `puzzle-3x3`, `puzzle-4x4` alpha 1000, the README's
commands for those suites, offline and offline-to-online alike.

Choices and deviations:
- The reference sums the three losses and takes one Adam step on the joint parameters. Each
  loss reaches only its own part (the distillation target and the Q term use the others'
  current parameters without gradient), and Adam is per-parameter, so one Adam per part, as
  here, takes the same steps.
- alpha 10 is the reference default; D4RL locomotion has no reference value (the paper tunes
  it on OGBench, AntMaze and Adroit). Rewards are left in the task's units.
- Online, FQL fine-tunes with the same losses (`on_switch` is the identity). The reference
  appends online data to the dataset buffer (uniform over the union: `--data-mix
  proportional`); `offline_ratio` 0.5 is its `--balanced_sampling` option and o2o's default.
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

from o2o.agents.base import (
    ActsFromNoise,
    Needs,
    Phase,
    compiled_create,
    gradient_step,
    register,
    scan_update_steps,
)
from o2o.nets.ensemble import StateActionValue, ensemble_state, reduce_members
from o2o.nets.mlp import Activation
from o2o.nets.policies import FlowField, flow_actions, flow_matching_loss


@dataclasses.dataclass(frozen=True)
class FQLConfig:
    """FQL hyperparameters; the defaults are the reference's."""

    actor_hidden_dims: tuple[int, ...] = (512, 512, 512, 512)
    hidden_dims: tuple[int, ...] = (512, 512, 512, 512)  # critic
    critic_layer_norm: bool = True  # after each activation, as the reference's MLP
    activation: Activation = "gelu"
    num_critics: int = 2
    q_agg: Literal["mean", "min"] = "mean"
    alpha: float = 10.0  # distillation weight: how close the one-step policy stays to the flow
    normalize_q_loss: bool = False
    flow_steps: int = 10
    lr: float = 3e-4
    discount: float = 0.99
    tau: float = 0.005
    batch_size: int = 256
    utd_ratio: int = 1
    offline_ratio: float = 0.5
    start_steps: int = 0
    normalize_observations: bool = False

    def __post_init__(self):
        if self.q_agg not in ("mean", "min"):
            raise ValueError(f"q_agg='{self.q_agg}' must be 'mean' or 'min'")
        if self.alpha < 0:
            raise ValueError(f"alpha={self.alpha} must be non-negative")
        if min(self.flow_steps, self.num_critics, self.utd_ratio, self.batch_size) < 1:
            raise ValueError("flow_steps, num_critics, utd_ratio and batch_size must be >= 1")


class FQL(ActsFromNoise, flax.struct.PyTreeNode):
    actor_flow: TrainState  # the BC flow
    actor: TrainState  # the one-step policy mu(s, z)
    critic: TrainState
    target_critic_params: Any
    rng: jax.Array
    config: FQLConfig = flax.struct.field(pytree_node=False)
    action_dim: int = flax.struct.field(pytree_node=False, default=1)

    @classmethod
    @compiled_create
    def create(
        cls, config: FQLConfig, obs_space: gym.spaces.Box, act_space: gym.spaces.Box, seed: int
    ) -> FQL:
        obs = jnp.zeros((1, *obs_space.shape), jnp.float32)
        act = jnp.zeros((1, act_space.shape[-1]), jnp.float32)
        key_flow, key_actor, key_critic, rng = jax.random.split(jax.random.key(seed), 4)
        flow_def = FlowField(act.shape[-1], config.actor_hidden_dims, activation=config.activation)
        actor_def = FlowField(act.shape[-1], config.actor_hidden_dims, activation=config.activation)
        critic = ensemble_state(
            StateActionValue(
                config.hidden_dims,
                config.critic_layer_norm,
                activation=config.activation,
                norm_first=False,
            ),
            key_critic,
            config.num_critics,
            optax.adam(config.lr),
            obs,
            act,
        )
        return cls(
            actor_flow=TrainState.create(
                apply_fn=flow_def.apply,
                params=flow_def.init(key_flow, obs, act, jnp.zeros(1)),
                tx=optax.adam(config.lr),
            ),
            actor=TrainState.create(
                apply_fn=actor_def.apply,
                params=actor_def.init(key_actor, obs, act),
                tx=optax.adam(config.lr),
            ),
            critic=critic,
            target_critic_params=jax.tree.map(jnp.copy, critic.params),
            rng=rng,
            config=config,
            action_dim=act.shape[-1],
        )

    def _aggregate(self, qs: jax.Array) -> jax.Array:
        """The critics' outputs [members, ...] reduced by `q_agg`."""
        return reduce_members(qs, self.config.q_agg)

    def _one_step(self, params, observations: jax.Array, noise: jax.Array) -> jax.Array:
        """mu(s, z) clipped to the action bounds: what acts and what Q is evaluated at."""
        return jnp.clip(self.actor.apply_fn(params, observations, noise), -1.0, 1.0)

    def _noise(self, key: jax.Array, observations: jax.Array) -> jax.Array:
        return jax.random.normal(key, (*observations.shape[:-1], self.action_dim))

    def critic_loss(self, critic_params, batch, key) -> tuple[jax.Array, dict[str, jax.Array]]:
        """mean_i E[(Q_i(s, a) - (r + gamma m agg_j Q'_j(s', mu(s', z))))^2]."""
        next_obs = batch["next_observations"]
        next_actions = self._one_step(self.actor.params, next_obs, self._noise(key, next_obs))
        next_q = self._aggregate(
            self.critic.apply_fn(self.target_critic_params, next_obs, next_actions)
        )
        target = batch["rewards"] + self.config.discount * batch["masks"] * next_q
        q = self.critic.apply_fn(critic_params, batch["observations"], batch["actions"])
        loss = jnp.mean((q - target) ** 2)
        return loss, {"critic_loss": loss, "q_mean": q.mean(), "target_mean": target.mean()}

    def flow_loss(self, flow_params, batch, key) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Flow matching of the BC flow on dataset actions."""
        loss = flow_matching_loss(
            self.actor_flow.apply_fn, flow_params, batch["observations"], batch["actions"], key
        ).mean()
        return loss, {"bc_flow_loss": loss}

    def actor_loss(self, actor_params, batch, key) -> tuple[jax.Array, dict[str, jax.Array]]:
        """alpha E||mu(s, z) - flow(s, z)||^2 / |A| - lam E[mean_i Q_i(s, clip(mu(s, z)))], lam
        1 or 1 / E|Q| (stopped gradient) with `normalize_q_loss`; the critics' mean whatever
        `q_agg`, which reduces the target only (as the reference). The distillation takes mu
        unclipped, as the reference: clipping there would cut the gradient of every dimension
        past a bound, and the one-step policy could drift out of bounds unchecked."""
        obs = batch["observations"]
        noise = self._noise(key, obs)
        target = flow_actions(
            self.actor_flow.apply_fn, self.actor_flow.params, obs, noise, self.config.flow_steps
        )
        raw = self.actor.apply_fn(actor_params, obs, noise)
        distill = jnp.mean((raw - target) ** 2)
        actions = jnp.clip(raw, -1.0, 1.0)
        q = self.critic.apply_fn(self.critic.params, obs, actions).mean(0)  # mean, any q_agg
        lam = (
            jax.lax.stop_gradient(1.0 / jnp.abs(q).mean()) if self.config.normalize_q_loss else 1.0
        )
        q_loss = -lam * q.mean()
        loss = self.config.alpha * distill + q_loss
        mse = jnp.mean((actions - batch["actions"]) ** 2)
        return loss, {
            "actor_loss": loss,
            "distill_loss": distill,
            "q_loss": q_loss,
            "action_mse": mse,
        }

    def update_step(self, batch) -> tuple[FQL, dict[str, jax.Array]]:
        """Critic, BC flow and one-step policy from the same (pre-step) parameters, as the
        reference's one joint loss; then the soft target update."""
        rng, key_critic, key_flow, key_actor = jax.random.split(self.rng, 4)
        critic, critic_info = gradient_step(self.critic, self.critic_loss, batch, key_critic)
        flow, flow_info = gradient_step(self.actor_flow, self.flow_loss, batch, key_flow)
        actor, actor_info = gradient_step(self.actor, self.actor_loss, batch, key_actor)
        target = optax.incremental_update(critic.params, self.target_critic_params, self.config.tau)
        agent = self.replace(
            critic=critic, actor_flow=flow, actor=actor, target_critic_params=target, rng=rng
        )
        return agent, critic_info | flow_info | actor_info

    def update(self, batch) -> tuple[FQL, dict[str, jax.Array]]:
        """One FQL step per minibatch on the leading axis (scanned); metrics averaged."""
        return scan_update_steps(self, batch)

    def noise_shapes(self, batch_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        return {"normal": (*batch_shape, self.action_dim)}

    def actions_from_noise(self, observations: jax.Array, noise: dict[str, jax.Array]) -> jax.Array:
        """mu(s, z): the reference acts (and evaluates) with fresh noise z ~ N(0, I)."""
        return self._one_step(self.actor.params, observations, noise["normal"])

    def q_values(self, observations: jax.Array, actions: jax.Array) -> jax.Array:
        """The critics' aggregate (`q_agg`), the value the actor maximises."""
        return self._aggregate(self.critic.apply_fn(self.critic.params, observations, actions))

    def on_switch(self, config: Any = None) -> FQL:
        return self

    def needs(self, phase: Phase) -> Needs:
        return Needs(normalize_observations=self.config.normalize_observations)


FQL_DEFAULT = FQLConfig()
FQL_MANIPULATION = dataclasses.replace(FQL_DEFAULT, alpha=300.0)  # cube and scene
FQL_PUZZLE = dataclasses.replace(FQL_DEFAULT, alpha=1000.0)
register(
    "fql",
    FQL,
    {
        "default": FQL_DEFAULT,
        "manipulation": FQL_MANIPULATION,
        "puzzle-3x3": FQL_PUZZLE,
        "puzzle-4x4": FQL_PUZZLE,
    },
    "flow Q-learning: BC flow + one-step policy against Q",
)
