"""Implicit Q-learning (Kostrikov, Nair, Levine 2022), as in ikostrikov/implicit_q_learning.

IQL never queries Q on actions outside the data. V(s) is fitted as an upper expectile of the
target critics' min_i Q'_i(s, a) over dataset actions; Q regresses on r + gamma m V(s'); the
policy is extracted by advantage-weighted regression (AWR) on dataset actions with weights
min(exp(beta (Q - V)), 100). Each minibatch runs the reference order: value, actor (with the
new V), critic (with the new V), then the soft target update.

Recipe (`configs/mujoco_config.py`, `learner.py`): (256, 256) MLPs, 2 critics, every learning
rate 3e-4, gamma 0.99, tau 0.005, expectile 0.7, beta 3.0, batch 256; the actor's learning rate
follows a cosine decay. `IQL_ANTMAZE` is the sparse-reward preset (`antmaze_config.py`:
expectile 0.9, beta 10.0); its rewards are shifted by -1, which the task registry's reward
transform applies (`SPARSE_TO_MINUS_ONE`), not this agent. `IQL_MANIPULATION` and
`IQL_SUITES` are the FQL paper's IQL on OGBench manipulation (its Tables 5-6, run with
seohongpark/fql `agents/iql.py`): 4 x 256 GELU networks with LayerNorm after each activation
in Q and V, a plain Gaussian actor N(f(s), I) whose last layer starts at 1/100 of the usual
scale, expectile 0.9, no learning-rate decay, rewards unscaled, AWR temperature 10 (scene,
puzzle-3x3), 1 (cube-single), 0.3 (cube-double), 3 (puzzle-4x4). The reference also rescales
locomotion rewards by 1000 / (max - min dataset episode return), so that beta = 3 acts on
advantages of a known scale: `reward_scale_by_return_range` asks the pipeline to do that, to
offline and online rewards alike (`o2o.train.pipeline.learning_task`).

Choices and deviations:
- Policy: the reference's Gaussian with a tanh'ed mean and a state-independent log-std
  (clipped to [-5, 2]), not a tanh-squashed distribution. Its log-density of dataset actions
  is finite at |a| = 1 without any atanh, and d3rlpy's IQL scored zero on AntMaze with a
  squashed policy (takuseno/d3rlpy#171). Sampled actions are clipped to [-1, 1], as there.
- Actor learning rate: cosine decay to 0 over `decay_steps` actor updates (the reference's
  offline recipe decays over its whole run: pass the offline budget), then constant
  `actor_lr`, so that an actor decayed offline still learns online and `on_switch` needs to
  change nothing. Neither reference fine-tunes that way: ikostrikov's fine-tuning config
  never decays (`opt_decay_schedule = None`, pre-training included: `--agent.decay-steps
  None`), and CORL's periodic `CosineAnnealingLR` climbs back from 0 over the online steps.
  `--reset-optimizers` also restarts the schedule (its step count is optimiser state).
- Initialisation: o2o's MLP (Xavier-uniform), not the reference's orthogonal(sqrt 2).
- Data online: the reference's `train_finetune.py` appends online transitions to the buffer
  holding the dataset and samples the union uniformly (`--data-mix proportional` does that).
  The default is `offline_ratio` 0.5, AWAC's stand-in for the same design: with a 1M-row
  dataset the union would keep online data under 1% of a batch for o2o's shorter budgets.
- Observations are left raw, as the reference (CORL's IQL standardises them:
  `--agent.normalize-observations` does that).
- Several minibatches per call run in `jax.lax.scan`, each a full IQL step.
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
    Needs,
    Phase,
    compiled_create,
    gradient_step,
    register,
    scan_update_steps,
)
from o2o.nets.ensemble import StateActionValue, StateValue, ensemble_state
from o2o.nets.mlp import Activation
from o2o.nets.policies import TanhMeanGaussian, clipped_gaussian_sample, gaussian_log_prob


@dataclasses.dataclass(frozen=True)
class IQLConfig:
    """IQL hyperparameters; the defaults are the reference locomotion recipe."""

    hidden_dims: tuple[int, ...] = (256, 256)
    num_critics: int = 2
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    value_lr: float = 3e-4
    decay_steps: int | None = 1_000_000  # actor cosine decay length; None: constant actor_lr
    discount: float = 0.99
    tau: float = 0.005
    expectile: float = 0.7
    temperature: float = 3.0  # beta, the inverse temperature of the AWR weights
    max_weight: float = 100.0  # clip of exp(beta A)
    batch_size: int = 256
    utd_ratio: int = 1
    offline_ratio: float = 0.5
    start_steps: int = 0
    reward_scale_by_return_range: bool = True  # r * 1000 / (max - min dataset episode return)
    normalize_observations: bool = False  # states standardised by the dataset's mean and std
    # Network forms: the defaults are ikostrikov/implicit_q_learning's; the `manipulation`
    # presets set seohongpark/fql's (GELU, LayerNorm after it in Q and V, a plain Gaussian
    # actor with unit std and a small last layer).
    activation: Activation = "relu"
    critic_layer_norm: bool = False  # Q and V
    tanh_mean: bool = True
    const_std: bool = False
    actor_init_scale: float = 1.0

    def __post_init__(self):
        if not 0.0 < self.expectile < 1.0:
            raise ValueError(f"expectile={self.expectile} must lie in (0, 1)")
        if self.decay_steps is not None and self.decay_steps < 1:
            raise ValueError(
                f"decay_steps={self.decay_steps} must be at least 1; use None for no decay"
            )
        if min(self.utd_ratio, self.batch_size, self.num_critics) < 1:
            raise ValueError("utd_ratio, batch_size and num_critics must be at least 1")


IQL_LOCOMOTION = IQLConfig()
IQL_ANTMAZE = dataclasses.replace(
    IQL_LOCOMOTION, expectile=0.9, temperature=10.0, reward_scale_by_return_range=False
)
# The FQL paper's IQL on OGBench manipulation (its Table 5 and 6; seohongpark/fql agents/iql.py):
# 4 x 256 GELU networks, expectile 0.9, AWR temperature per suite, no learning-rate decay.
IQL_MANIPULATION = dataclasses.replace(
    IQL_LOCOMOTION,
    hidden_dims=(256, 256, 256, 256),
    decay_steps=None,
    expectile=0.9,
    temperature=10.0,  # scene, puzzle-3x3
    reward_scale_by_return_range=False,
    activation="gelu",
    critic_layer_norm=True,
    tanh_mean=False,
    const_std=True,
    actor_init_scale=0.01,
)
IQL_SUITES = {
    suite: dataclasses.replace(IQL_MANIPULATION, temperature=temperature)
    for suite, temperature in (("cube-single", 1.0), ("cube-double", 0.3), ("puzzle-4x4", 3.0))
}


def actor_learning_rate(config: IQLConfig) -> optax.ScalarOrSchedule:
    """Cosine decay over `decay_steps` actor updates, then constant (see the module notes)."""
    if config.decay_steps is None:
        return config.actor_lr
    return optax.join_schedules(
        [
            optax.cosine_decay_schedule(config.actor_lr, config.decay_steps),
            optax.constant_schedule(config.actor_lr),
        ],
        [config.decay_steps],
    )


class IQL(flax.struct.PyTreeNode):
    actor: TrainState
    critic: TrainState
    target_critic_params: Any
    value: TrainState
    config: IQLConfig = flax.struct.field(pytree_node=False)

    @classmethod
    @compiled_create
    def create(
        cls,
        config: IQLConfig,
        obs_space: gym.spaces.Box,
        act_space: gym.spaces.Box,
        seed: int,
    ) -> IQL:
        obs = jnp.zeros((1, *obs_space.shape), jnp.float32)
        act = jnp.zeros((1, *act_space.shape), jnp.float32)
        key_actor, key_critic, key_value = jax.random.split(jax.random.key(seed), 3)

        actor_def = TanhMeanGaussian(
            act.shape[-1],
            config.hidden_dims,
            tanh_mean=config.tanh_mean,
            const_std=config.const_std,
            activation=config.activation,
            mean_init_scale=config.actor_init_scale,
        )
        actor = TrainState.create(
            apply_fn=actor_def.apply,
            params=actor_def.init(key_actor, obs),
            tx=optax.adam(actor_learning_rate(config)),
        )
        norm = {
            "layer_norm": config.critic_layer_norm,
            "activation": config.activation,
            "norm_first": False,
        }
        critic_def = StateActionValue(config.hidden_dims, **norm)
        critic = ensemble_state(
            critic_def, key_critic, config.num_critics, optax.adam(config.critic_lr), obs, act
        )
        value_def = StateValue(config.hidden_dims, **norm)
        value = TrainState.create(
            apply_fn=value_def.apply,
            params=value_def.init(key_value, obs),
            tx=optax.adam(config.value_lr),
        )
        return cls(
            actor=actor,
            critic=critic,
            target_critic_params=jax.tree.map(jnp.copy, critic.params),
            value=value,
            config=config,
        )

    def _target_q(self, observations: jax.Array, actions: jax.Array) -> jax.Array:
        return self.critic.apply_fn(self.target_critic_params, observations, actions).min(0)

    def value_loss(self, value_params, batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        """E[|tau - 1(u < 0)| u^2], u = min_i Q'_i(s, a) - V(s): V -> tau-expectile of Q."""
        q = self._target_q(batch["observations"], batch["actions"])
        v = self.value.apply_fn(value_params, batch["observations"])
        u = q - v
        tau = self.config.expectile
        loss = jnp.mean(jnp.where(u < 0, 1.0 - tau, tau) * u**2)
        return loss, {"value_loss": loss, "v_mean": v.mean()}

    def critic_loss(self, critic_params, batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        """sum_i E[(Q_i(s, a) - (r + gamma m V(s')))^2]; summed over critics as the reference."""
        next_v = self.value.apply_fn(self.value.params, batch["next_observations"])
        target = batch["rewards"] + self.config.discount * batch["masks"] * next_v
        q = self.critic.apply_fn(critic_params, batch["observations"], batch["actions"])
        loss = jnp.mean((q - target) ** 2, axis=-1).sum()
        return loss, {"critic_loss": loss, "q_mean": q.mean(), "target_mean": target.mean()}

    def actor_loss(self, actor_params, batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        """-E[min(exp(beta (min_i Q'_i(s, a) - V(s))), 100) log pi(a|s)] on dataset actions."""
        obs, actions = batch["observations"], batch["actions"]
        adv = self._target_q(obs, actions) - self.value.apply_fn(self.value.params, obs)
        weights = jnp.minimum(jnp.exp(self.config.temperature * adv), self.config.max_weight)
        mean, log_std = self.actor.apply_fn(actor_params, obs)
        loss = -jnp.mean(weights * gaussian_log_prob(mean, log_std, actions))
        return loss, {
            "actor_loss": loss,
            "adv_mean": adv.mean(),
            "adv_std": adv.std(),
            "weight_mean": weights.mean(),
            "weight_ess": weights.sum() ** 2 / (weights.size * jnp.sum(weights**2)),
            "weight_clip_frac": jnp.mean(weights >= self.config.max_weight),
            "policy_std": jnp.exp(log_std).mean(),
        }

    def update_step(self, batch) -> tuple[IQL, dict[str, jax.Array]]:
        """One IQL step on one minibatch: value, actor, critic, target (the reference order)."""
        value, value_info = gradient_step(self.value, self.value_loss, batch)
        agent = self.replace(value=value)
        actor, actor_info = gradient_step(agent.actor, agent.actor_loss, batch)
        critic, critic_info = gradient_step(agent.critic, agent.critic_loss, batch)
        target = optax.incremental_update(
            critic.params, agent.target_critic_params, self.config.tau
        )
        agent = agent.replace(actor=actor, critic=critic, target_critic_params=target)
        return agent, value_info | actor_info | critic_info

    def update(self, batch) -> tuple[IQL, dict[str, jax.Array]]:
        """One IQL step per minibatch on the leading axis (scanned); metrics averaged."""
        return scan_update_steps(self, batch)

    def sample_actions(
        self, observations: jax.Array, key: jax.Array, deterministic: bool = False
    ) -> jax.Array:
        mean, log_std = self.actor.apply_fn(self.actor.params, observations)
        return clipped_gaussian_sample(mean, log_std, key, deterministic)

    def q_values(self, observations: jax.Array, actions: jax.Array) -> jax.Array:
        """Min over the critics: the estimate V and the AWR weights are built from."""
        return self.critic.apply_fn(self.critic.params, observations, actions).min(0)

    def on_switch(self, config: Any = None) -> IQL:
        """IQL fine-tunes online with its offline losses; the actor LR schedule already goes
        constant after `decay_steps` (unless `--reset-optimizers` restarts it)."""
        return self

    def needs(self, phase: Phase) -> Needs:
        return Needs(
            normalize_observations=self.config.normalize_observations,
            reward_scale_by_return_range=self.config.reward_scale_by_return_range,
        )


register(
    "iql",
    IQL,
    {
        "locomotion": IQL_LOCOMOTION,
        "navigation": IQL_ANTMAZE,
        "manipulation": IQL_MANIPULATION,
        **IQL_SUITES,
    },
    "implicit Q-learning: expectile V, AWR actor",
)
