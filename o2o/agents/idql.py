"""Implicit diffusion Q-learning (IDQL; Hansen-Estruch et al. 2023), with a flow policy.

IDQL reads IQL as an actor-critic method whose critic implies a policy: the behaviour policy
reweighted towards actions with Q > V. IQL fits that policy with a Gaussian (AWR), whose mean
falls between the modes of a multi-modal action distribution; IDQL draws from it instead. A
generative model clones the behaviour policy (no Q in its loss), V and Q are IQL's (trained on
dataset actions only), and acting draws `num_samples` candidates per state from the model and
keeps the one the target critics rate highest (`greedy`), or resamples one by the expectile
weights (`expectile`).

Recipe. IDQL (philippe-eecs/IDQL, jaxrl5 `ddpm_iql_learner.py` and its launcher; the package
now imports the leaner `ddpm_iql_simple`, pure BC only): IQL's critic
(2 Qs and V; expectile 0.7 for locomotion, 0.9 for AntMaze), a DDPM behaviour policy trained by
pure BC (`actor_objective='bc'`) with a cosine actor-LR decay over `decay_steps`, an EMA of the
actor (`actor_tau` 0.001) that acts, greedy argmax of the target critics' Q over N samples (64
offline, 128 fine-tuning), locomotion returns rescaled to a 1000 span. Online only V and Q
train (the actor is frozen), on batches of 128 online + 128 offline transitions. IFQL
(seohongpark/fql `agents/ifql.py`, the flow version of IDQL): flow-matching BC with a
(512, 512, 512, 512) GELU MLP, 10 Euler steps, 32 samples, argmax Q.

Choices and deviations:
- Flow matching (IFQL's loss, network, 10 Euler steps and 32 samples) instead of IDQL's DDPM
  (5 steps, VP schedule, an LN-ResNet of 3 blocks with dropout 0.1): the flow is shared with
  flow_bc and FQL, and IFQL shows it does the same job. Set `num_samples` to 64 or 128 for
  IDQL's counts.
- `selection='expectile'` resamples with probability proportional to |tau - 1(Q - V < 0)|, the
  reference code's `sample_implicit_policy`; the paper's importance weight also divides by
  |Q - V|, which is unbounded where Q = V.
- Critic and value: IQL's (256, 256) MLPs without LayerNorm. IDQL's current learner
  (`ddpm_iql_simple`, the one its package imports) puts one LayerNorm on V's input and none
  in Q; IFQL has LayerNorm after each GELU of its 4 x 512 Q and V. Batch 256 (IQL's and
  IFQL's); both IDQL launchers use 512 rows, and the paper's commit trained the actor on
  2 x 1024 and the critic on 256. The actor's Adam has no weight decay (IFQL's; IDQL's adamw
  decays by optax's default 1e-4).
- IDQL's 95/5 train/validation split of the dataset is not made.
- Online batches are half offline (`offline_ratio` 0.5, IDQL's 128 + 128). IDQL waits 5,000
  environment steps before updating, acting with its policy meanwhile: `--agent.start-steps
  5000` does that (IDQL declares no random warm-up); the default 0 updates from the first
  step, for fine-tuning budgets shorter than the reference's.
- `on_switch` stops the actor and its EMA (the actor frozen by `switch_parts`, `actor_tau` set
  to 0), as IDQL's critic-only fine-tuning; `online_actor_updates=True` keeps training both
  with the offline loss (what the launcher's unread `train_actor_finetuning` switch names).
- The EMA warms up: its rate is max(`actor_tau`, 1/k) after k actor updates, so the acting
  copy is the mean of the actor so far until k = 1/`actor_tau` (1,000), then the reference's
  EMA. Without it the copy keeps 0.999^k of its random initial weights (13% after 2,000
  updates), so small-budget runs acted with a partly random flow; at the reference's millions
  of updates the two agree.
- `temperature` and `max_weight` are IQL's AWR fields, unused here.
- Each step runs IQL's order (value, actor, critic, target critics), then the EMA. The BC
  actor reads no critic, so only V-before-Q matters.
- `deterministic` changes nothing: a flow has no mode to return (zero noise lands between
  symmetric modes). Evaluation draws fresh noise at every step from a key sequence that
  restarts with each evaluation, as the reference draws fresh noise, and is reproducible.
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
    register,
    switch_parts,
)
from o2o.agents.iql import IQL, IQLConfig, actor_learning_rate
from o2o.nets.mlp import Activation
from o2o.nets.policies import FlowField, flow_actions, flow_matching_loss


@dataclasses.dataclass(frozen=True)
class IDQLConfig(IQLConfig):
    """IDQL hyperparameters: IQL's (critic, value, actor LR and its decay) plus the flow actor
    and the selection rule; the defaults are the locomotion recipe."""

    actor_hidden_dims: tuple[int, ...] = (512, 512, 512, 512)
    actor_activation: Activation = "gelu"  # IFQL's flow (ReLU before 2026-12-04); critics: ReLU
    flow_steps: int = 10  # Euler steps from noise to action
    num_samples: int = 32  # candidates per state when acting (IFQL 32; IDQL 64, 128 online)
    selection: Literal["greedy", "expectile"] = "greedy"  # argmax Q, or expectile resampling
    actor_tau: float = 0.001  # EMA rate of the actor's acting copy; 1: no EMA, 0: it stays
    online_actor_updates: bool = False  # train the actor online too (IDQL: V and Q only)
    offline_ratio: float = 0.5  # online batches half offline (IDQL's 128 + 128)

    def __post_init__(self):
        super().__post_init__()
        if self.flow_steps < 1:
            raise ValueError(f"flow_steps={self.flow_steps} must be at least 1")
        if self.num_samples < 1:
            raise ValueError(f"num_samples={self.num_samples} must be at least 1")
        if self.selection not in ("greedy", "expectile"):
            raise ValueError(f"selection='{self.selection}' must be 'greedy' or 'expectile'")
        if not 0.0 <= self.actor_tau <= 1.0:
            raise ValueError(f"actor_tau={self.actor_tau} must lie in [0, 1]")


IDQL_LOCOMOTION = IDQLConfig()
IDQL_ANTMAZE = dataclasses.replace(
    IDQL_LOCOMOTION, expectile=0.9, reward_scale_by_return_range=False
)


def expectile_probabilities(q: jax.Array, v: jax.Array, expectile: float) -> jax.Array:
    """Probabilities over the candidates (last axis of `q`, shape [..., N]) proportional to
    |tau - 1(Q - V < 0)|; `v` has shape [...]."""
    weights = jnp.where(q - v[..., None] < 0, 1.0 - expectile, expectile)
    return weights / weights.sum(-1, keepdims=True)


def inverse_cdf_index(probs: jax.Array, uniform: jax.Array) -> jax.Array:
    """The index drawn from the categorical `probs` (last axis, unnormalised) by a uniform in
    [0, 1): the first whose cumulative share exceeds it."""
    cdf = jnp.cumsum(probs, axis=-1)
    below = (cdf < uniform[..., None] * cdf[..., -1:]).sum(-1)
    return jnp.minimum(below, probs.shape[-1] - 1)


class IDQL(ActsFromNoise, IQL):
    """IQL with a flow-matching BC actor; acts by selecting among the flow's samples.

    `rng` is the key of the flow-matching noise: `update_step` gives each step a fresh one.
    `target_actor_params` is the EMA of the actor, the copy that acts."""

    target_actor_params: Any
    rng: jax.Array
    action_dim: int = flax.struct.field(pytree_node=False, default=1)

    @classmethod
    @compiled_create
    def create(
        cls,
        config: IDQLConfig,
        obs_space: gym.spaces.Box,
        act_space: gym.spaces.Box,
        seed: int,
    ) -> IDQL:
        base = IQL.create(config, obs_space, act_space, seed)  # critics and value; actor unused
        obs = jnp.zeros((1, *obs_space.shape), jnp.float32)
        act = jnp.zeros((1, act_space.shape[-1]), jnp.float32)
        key_actor, rng = jax.random.split(jax.random.fold_in(jax.random.key(seed), 1))
        actor_def = FlowField(
            act.shape[-1], config.actor_hidden_dims, activation=config.actor_activation
        )
        actor = TrainState.create(
            apply_fn=actor_def.apply,
            params=actor_def.init(key_actor, obs, act, jnp.zeros(1)),
            tx=optax.adam(actor_learning_rate(config)),
        )
        return cls(
            actor=actor,
            critic=base.critic,
            target_critic_params=base.target_critic_params,
            value=base.value,
            config=config,
            target_actor_params=jax.tree.map(jnp.copy, actor.params),
            rng=rng,
            action_dim=act.shape[-1],
        )

    def actor_loss(self, actor_params, batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        """E ||v(s, x_t, t) - (a - x_0)||^2 / |A| on dataset actions (pure BC), the noise
        drawn with `self.rng`."""
        loss = flow_matching_loss(
            self.actor.apply_fn, actor_params, batch["observations"], batch["actions"], self.rng
        ).mean()
        return loss, {"actor_loss": loss}

    def update_step(self, batch) -> tuple[IDQL, dict[str, jax.Array]]:
        """IQL's step with this step's flow-noise key, then the EMA of the actor, at rate
        max(actor_tau, 1 / k) after the actor's k-th update: the mean of its parameters so far
        until k = 1 / actor_tau, then the reference's EMA (`actor_tau` 0 stops it)."""
        rng, key = jax.random.split(self.rng)
        agent, info = IQL.update_step(self.replace(rng=key), batch)
        tau = agent.config.actor_tau
        rate = jnp.maximum(tau, 1.0 / jnp.maximum(agent.actor.step, 1)) if tau > 0 else 0.0
        target = optax.incremental_update(agent.actor.params, agent.target_actor_params, rate)
        return agent.replace(target_actor_params=target, rng=rng), info

    def noise_shapes(self, batch_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        """The flow's noise per candidate, and with expectile selection a uniform per state
        for the resampling draw."""
        shapes = {"normal": (*batch_shape, self.config.num_samples, self.action_dim)}
        if self.config.selection == "expectile":
            shapes["uniform"] = batch_shape
        return shapes

    def actions_from_noise(self, observations: jax.Array, noise: dict[str, jax.Array]) -> jax.Array:
        """Per state, `num_samples` actions from the EMA flow, one kept by `selection` on the
        target critics' min Q (see the module notes on `deterministic`)."""
        obs = jnp.repeat(observations[..., None, :], self.config.num_samples, axis=-2)
        candidates = flow_actions(
            self.actor.apply_fn,
            self.target_actor_params,
            obs,
            noise["normal"],
            self.config.flow_steps,
        )
        q = self._target_q(obs, candidates)
        if self.config.selection == "greedy":
            index = q.argmax(-1)
        else:
            v = self.value.apply_fn(self.value.params, observations)
            probs = expectile_probabilities(q, v, self.config.expectile)
            index = inverse_cdf_index(probs, noise["uniform"])
        return jnp.take_along_axis(candidates, index[..., None, None], axis=-2)[..., 0, :]

    def needs(self, phase: Phase) -> Needs:
        """IQL's, and a warm-up (`start_steps`) that acts with the policy, as the reference."""
        return dataclasses.replace(super().needs(phase), random_warmup=False)

    def on_switch(self, config: Any = None) -> IDQL:
        """Unless `online_actor_updates`, stop the actor (frozen) and its EMA (`actor_tau` 0):
        online, only V and Q train."""
        if (config or self.config).online_actor_updates:
            return self
        stopped = self.replace(config=dataclasses.replace(self.config, actor_tau=0.0))
        return switch_parts(stopped, freeze=("actor",))


register(
    "idql",
    IDQL,
    {"locomotion": IDQL_LOCOMOTION, "navigation": IDQL_ANTMAZE},
    "IDQL: IQL critic, flow BC actor, best-of-N by Q",
)
