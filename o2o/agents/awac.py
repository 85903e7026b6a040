"""Advantage-weighted actor-critic (Nair, Gupta, Dalal, Levine 2020), as in CORL's
`algorithms/finetune/awac.py` (corl-team/CORL; tinkoff-ai/CORL is the frozen original).

On a batch of (s, a, r, s', m):

    critics: sum_i E[(Q_i(s, a) - (r + gamma m min_j Q'_j(s', a')))^2],  a' ~ pi(.|s')
             (SAC's TD backup without the entropy term; 2 critics, soft target update)
    actor:   -E[w log pi(a|s)],  w = min(exp(A(s, a) / lambda), 100),
             A(s, a) = min_i Q_i(s, a) - min_i Q_i(s, a_pi),  a_pi ~ pi(.|s)

The actor is advantage-weighted regression on the batch's actions: it never queries Q on its own
gradient path, so the only constraint to the data is the weighted likelihood. V(s) is a
one-sample estimate, min_i Q_i(s, a_pi) with one fresh a_pi ~ pi(.|s), as CORL and rlkit
(`vf_K` = 1, `awr_use_mle_for_vf=False` in `examples/awac/mujoco/awac1.py`): it is unbiased
for E_pi[min_i Q_i], whereas Q(s, mean) is the value of the deterministic policy, which sits
above E_pi Q near a maximum of Q (Jensen) and so biases every advantage downwards. Each
minibatch runs CORL's order: critic step, actor step with the updated critics, soft target
update; a' and a_pi are both drawn from the pre-step policy.

Recipe (CORL): 2 critics, every learning rate 3e-4, gamma 0.99, tau 5e-3, batch 256, UTD 1,
weights clipped at 100 (`exp_adv_max`), policy N(mean(s), exp(log_std)) with a state-independent
log-std (init 0) clipped to [-20, 2], sampled actions clipped to [-1, 1], deterministic action
= the mean; actor and critics 3 x 256 (`hidden_dim` 256, three hidden layers). lambda
(`awac_lambda`, the temperature; CORL's default is 1.0):
- `AWAC_LOCOMOTION` (registered `awac`): 1/3, CORL's locomotion configs
  (`configs/offline/awac/{halfcheetah,hopper,walker2d}/*.yaml`: 0.3333; CORL ships fine-tuning
  configs only for AntMaze and Adroit);
- `AWAC_ANTMAZE`: 0.1, CORL's fine-tuning configs (`configs/finetune/awac/{antmaze,pen,door,
  hammer}/*.yaml`); their reward shift r - 1 belongs to the task registry, not this agent.
rlkit (`examples/awac/mujoco/awac1.py`) differs: beta 2, batch 1024, 4 x 256 policy with
log-std in [-6, 0], policy weight decay 1e-4, and weights softmax-normalised over the batch
rather than clipped. o2o follows CORL throughout.

Choices and deviations:
- Policy: o2o's `TanhMeanGaussian` (IQL's), whose mean is tanh'ed, so the deterministic action
  lies in [-1, 1] without the environment's clip; CORL's mean is unbounded. Its log-density of
  dataset actions is a plain Gaussian one, as CORL's, finite at |a| = 1.
- Data: CORL fine-tunes on one buffer pre-filled with the dataset, online transitions
  appended and sampled uniformly, so the offline share falls from 1 towards 1/2 over 1M online
  steps. `offline_ratio` 0.5 is the stand-in (fixed mixing at its end value).
- Observations are standardised by the dataset's mean and std, as CORL's `normalize`; the
  pipeline applies it (`normalize_observations`, `o2o.train.pipeline.learning_task`).
- Initialisation: o2o's MLP (Xavier-uniform), not PyTorch's default.
- `on_switch` is the identity: CORL changes nothing at the switch.
- `softmax_weights` (default off, CORL's clip) normalises the weights over the minibatch,
  w = N softmax(A / lambda), as rlkit and d3rlpy do: the same relative weights as exp(A / lambda)
  without the clip, so the largest advantages in a batch dominate it.
- `critic_entropy_weight` (default 0, the references) puts SAC's entropy term into the critic
  target, to compare with d3rlpy: its AWAC (2.8.1) inherits SAC's target,
  min Q'(s', a') - t log pi(a'|s') with a' from a tanh-squashed Gaussian, at a fixed t = 1 (a
  dummy log-temperature of 0). o2o's log pi(a'|s') is the Gaussian density of the clipped
  sample (its policy clips rather than squashes). On hopper-medium after 300 updates d3rlpy's
  term lowered its targets by about 5 per step, more than the reward (about 3): see
  benchmarks/results/awac_parity.md for what it does to the scores.
- Several minibatches per call run in `jax.lax.scan`, each a full AWAC step.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.struct
import gymnasium as gym
import jax
import jax.numpy as jnp
import optax
from flax.training.train_state import TrainState

from o2o.agents.base import Needs, Phase, compiled_create, register, scan_update_steps
from o2o.nets.ensemble import StateActionValue, ensemble_state
from o2o.nets.mlp import Init
from o2o.nets.policies import (
    TanhMeanGaussian,
    clipped_gaussian_sample,
    gaussian_log_prob,
    tanh_gaussian_sample,
)


@dataclasses.dataclass(frozen=True)
class AWACConfig:
    """AWAC hyperparameters; the defaults are CORL's locomotion recipe."""

    hidden_dims: tuple[int, ...] = (256, 256, 256)  # actor and critics (CORL: 3 x hidden_dim)
    num_critics: int = 2
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    discount: float = 0.99
    tau: float = 5e-3
    awac_lambda: float = 1.0 / 3.0  # temperature: w = exp(A / lambda)
    max_weight: float = 100.0  # clip of exp(A / lambda) (CORL `exp_adv_max`)
    # w = N softmax(A / lambda) over the minibatch instead of the clipped exp(A / lambda): rlkit's
    # AWAC (`normalize_over_batch`, the paper's code) and d3rlpy's; CORL clips.
    softmax_weights: bool = False
    # t in the critic target min Q'(s', a') - t log pi(a'|s'): 0 in the references (rlkit's
    # `alpha=0`, CORL); d3rlpy's AWAC has 1 (see the module docstring).
    critic_entropy_weight: float = 0.0
    # a' in the critic target: clip(tanh(mu) + sigma eps) as the references (False), or SAC's
    # squashed tanh(mu + sigma eps) with its tanh-Gaussian log-density in the entropy term, as
    # d3rlpy's AWAC (its target is its SAC's).
    squashed_target_actions: bool = False
    log_std_min: float = -20.0
    log_std_max: float = 2.0
    log_std_init: float = 0.0  # CORL's; d3rlpy's AWAC starts at -3 (std 0.05) in [-6, 0]
    # Initial weights: jaxrl's Xavier-uniform ("xavier", o2o's everywhere) or PyTorch's
    # nn.Linear ("torch": uniform in +-1/sqrt(fan_in), biases too), as CORL, rlkit and d3rlpy.
    weight_init: Init = "xavier"
    batch_size: int = 256
    utd_ratio: int = 1
    offline_ratio: float = 0.5
    start_steps: int = 0
    normalize_observations: bool = True  # states standardised by the dataset's mean and std

    def __post_init__(self):
        if self.critic_entropy_weight < 0:
            raise ValueError(f"critic_entropy_weight={self.critic_entropy_weight} must be >= 0")
        if self.awac_lambda <= 0 or self.max_weight <= 0:
            raise ValueError(
                f"awac_lambda={self.awac_lambda} and max_weight={self.max_weight} must be positive"
            )
        if min(self.utd_ratio, self.batch_size, self.num_critics) < 1:
            raise ValueError("utd_ratio, batch_size and num_critics must be at least 1")


AWAC_LOCOMOTION = AWACConfig()
AWAC_ANTMAZE = dataclasses.replace(AWAC_LOCOMOTION, awac_lambda=0.1)


class AWAC(flax.struct.PyTreeNode):
    actor: TrainState
    critic: TrainState
    target_critic_params: Any
    rng: jax.Array
    config: AWACConfig = flax.struct.field(pytree_node=False)

    @classmethod
    @compiled_create
    def create(
        cls,
        config: AWACConfig,
        obs_space: gym.spaces.Box,
        act_space: gym.spaces.Box,
        seed: int,
    ) -> AWAC:
        obs = jnp.zeros((1, *obs_space.shape), jnp.float32)
        act = jnp.zeros((1, *act_space.shape), jnp.float32)
        key_actor, key_critic, rng = jax.random.split(jax.random.key(seed), 3)

        actor_def = TanhMeanGaussian(
            act.shape[-1],
            config.hidden_dims,
            config.log_std_min,
            config.log_std_max,
            log_std_init=config.log_std_init,
            weight_init=config.weight_init,
        )
        actor = TrainState.create(
            apply_fn=actor_def.apply,
            params=actor_def.init(key_actor, obs),
            tx=optax.adam(config.actor_lr),
        )
        critic_def = StateActionValue(config.hidden_dims, weight_init=config.weight_init)
        critic = ensemble_state(
            critic_def, key_critic, config.num_critics, optax.adam(config.critic_lr), obs, act
        )
        return cls(
            actor=actor,
            critic=critic,
            target_critic_params=jax.tree.map(jnp.copy, critic.params),
            rng=rng,
            config=config,
        )

    def td_target(
        self,
        batch: dict[str, jax.Array],
        next_actions: jax.Array,
        log_pi: jax.Array | None = None,
    ) -> jax.Array:
        """y = r + gamma m (min_j Q'_j(s', a') - t log pi(a'|s')), t = `critic_entropy_weight`
        (0: no entropy term, as the references; then `log_pi` may be None)."""
        next_obs = batch["next_observations"]
        next_q = self.critic.apply_fn(self.target_critic_params, next_obs, next_actions).min(0)
        if self.config.critic_entropy_weight:
            next_q = next_q - self.config.critic_entropy_weight * log_pi
        return batch["rewards"] + self.config.discount * batch["masks"] * next_q

    def critic_loss(
        self,
        critic_params: Any,
        batch: dict[str, jax.Array],
        next_actions: jax.Array,
        log_pi: jax.Array | None = None,
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """sum_i E[(Q_i(s, a) - y)^2], a' ~ pi(.|s') and its log-density given; summed over
        critics as CORL."""
        target = jax.lax.stop_gradient(self.td_target(batch, next_actions, log_pi))
        q = self.critic.apply_fn(critic_params, batch["observations"], batch["actions"])
        loss = jnp.mean((q - target) ** 2, axis=-1).sum()
        return loss, {"critic_loss": loss, "q_mean": q.mean(), "target_mean": target.mean()}

    def actor_loss(
        self, actor_params: Any, batch: dict[str, jax.Array], pi_actions: jax.Array
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """-E[min(exp((Q(s, a) - Q(s, a_pi)) / lambda), 100) log pi(a|s)], Q = min_i Q_i,
        a_pi ~ pi(.|s) given (the one-sample V)."""
        obs, actions = batch["observations"], batch["actions"]
        q = self.q_values(obs, actions)
        v = self.q_values(obs, pi_actions)
        adv = q - v
        # exp(min(x, log c)) = min(exp(x), c), without overflowing to inf on the way.
        scaled = adv / self.config.awac_lambda
        if self.config.softmax_weights:
            weights = jax.nn.softmax(scaled) * scaled.shape[0]
        else:
            weights = jnp.exp(jnp.minimum(scaled, math.log(self.config.max_weight)))
        weights = jax.lax.stop_gradient(weights)
        mean, log_std = self.actor.apply_fn(actor_params, obs)
        loss = -jnp.mean(weights * gaussian_log_prob(mean, log_std, actions))
        return loss, {
            "actor_loss": loss,
            "adv_mean": adv.mean(),
            "v_mean": v.mean(),
            "weight_mean": weights.mean(),
            "weight_clip_frac": jnp.mean(scaled >= math.log(self.config.max_weight)),
            "policy_std": jnp.exp(log_std).mean(),
        }

    def update_step(self, batch: dict[str, jax.Array]) -> tuple[AWAC, dict[str, jax.Array]]:
        """One AWAC step (CORL's order): critics, then the actor with the new critics, then
        the targets. a' ~ pi(.|s') and a_pi ~ pi(.|s) come from the pre-step policy, drawn
        with keys 1 and 2 of `split(rng, 3)` (key 0 is the next rng)."""
        rng, key_next, key_pi = jax.random.split(self.rng, 3)
        next_actions, log_pi = self.target_actions(batch["next_observations"], key_next)
        pi_actions = self.sample_actions(batch["observations"], key_pi)

        grads, critic_info = jax.grad(self.critic_loss, has_aux=True)(
            self.critic.params, batch, next_actions, log_pi
        )
        agent = self.replace(critic=self.critic.apply_gradients(grads=grads), rng=rng)
        grads, actor_info = jax.grad(agent.actor_loss, has_aux=True)(
            agent.actor.params, batch, pi_actions
        )
        target = optax.incremental_update(
            agent.critic.params, agent.target_critic_params, self.config.tau
        )
        agent = agent.replace(
            actor=agent.actor.apply_gradients(grads=grads), target_critic_params=target
        )
        return agent, critic_info | actor_info

    def target_actions(
        self, next_observations: jax.Array, key: jax.Array
    ) -> tuple[jax.Array, jax.Array | None]:
        """a' ~ pi(.|s') for the critic target and log pi(a'|s') (None when no entropy term
        uses it): the clipped Gaussian draw (as `sample_actions`) and the density of the
        clipped value, or with `squashed_target_actions` SAC's tanh(mu + sigma eps) and its
        tanh-Gaussian density."""
        squashed = self.config.squashed_target_actions
        mean, log_std = self.actor.apply_fn(self.actor.params, next_observations, squashed)
        if squashed:  # `mean` before its tanh
            return tanh_gaussian_sample(mean, log_std, key)
        actions = clipped_gaussian_sample(mean, log_std, key)
        if not self.config.critic_entropy_weight:
            return actions, None
        return actions, gaussian_log_prob(mean, log_std, actions)

    def update(self, batch: dict[str, jax.Array]) -> tuple[AWAC, dict[str, jax.Array]]:
        """One AWAC step per minibatch on the leading axis (scanned); metrics averaged."""
        return scan_update_steps(self, batch)

    def sample_actions(
        self, observations: jax.Array, key: jax.Array, deterministic: bool = False
    ) -> jax.Array:
        """a ~ N(mean(s), std) clipped to [-1, 1] (CORL's clamp); the mean if deterministic."""
        mean, log_std = self.actor.apply_fn(self.actor.params, observations)
        return clipped_gaussian_sample(mean, log_std, key, deterministic)

    def q_values(self, observations: jax.Array, actions: jax.Array) -> jax.Array:
        """Min over the critics: the Q the advantages are built from."""
        return self.critic.apply_fn(self.critic.params, observations, actions).min(0)

    def on_switch(self, config: Any = None) -> AWAC:
        """Identity: CORL fine-tunes AWAC online with its offline losses and settings."""
        return self

    def needs(self, phase: Phase) -> Needs:
        return Needs(normalize_observations=self.config.normalize_observations)


register(
    "awac",
    AWAC,
    {"locomotion": AWAC_LOCOMOTION, "navigation": AWAC_ANTMAZE},
    "advantage-weighted actor-critic (CORL)",
)
