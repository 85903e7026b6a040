"""FPO: Flow Matching Policy Gradients (McAllister et al. 2025), on-policy fine-tuning of a flow
policy pre-trained by flow-matching behaviour cloning.

A flow policy has no tractable likelihood, so PPO's ratio pi_new(a|s) / pi_old(a|s) cannot be
computed. FPO replaces its log with a difference of conditional flow-matching (CFM) losses,
which bound the log-likelihood up to a constant: for each action taken, draw N pairs
(x_0 ~ N(0, I), t ~ U[0, 1]), and with L(a|s) = mean over the pairs of the CFM error,
```
ratio  = exp(L_old(a|s) - L_new(a|s))          (losses averaged over the N pairs, then exp)
actor  = -E[min(ratio A, clip(ratio, 1 - eps, 1 + eps) A)]   A: GAE(lambda), normalised
value  = E[(V(s) - (A + V_old(s)))^2]
```
Offline (o2o's addition for offline-to-online; the reference trains online from scratch): the
flow is pre-trained by flow matching on the dataset's actions (flow BC), and V regresses the
dataset's discounted Monte-Carlo returns, so the first online advantages are measured against
the behaviour policy's value instead of a random network. Online, each iteration collects
`rollout_length` steps from `num_envs` vectorised environments with the current flow, then
takes `epochs` passes of minibatches over them (`o2o.train.onpolicy`).

Recipe (akanazawa/fpo `playground/src/flow_policy/fpo.py`): clip eps 0.05, N = 8 (eps, t) pairs
per action, losses averaged before the exp, GAE lambda 0.95, advantages normalised per
minibatch, Adam 3e-4,
10 Euler steps, no noise added when acting (the flow's stochasticity is its initial noise).
Deviations, and why:
- Scale: the reference is Brax PPO for 2,048 GPU environments (32 minibatches of 1,024 x 30
  steps, 16 passes, 60M steps). On a CPU o2o uses PPO's MuJoCo scale (CleanRL: 2,048
  transitions per iteration, 10 epochs): 8 environments x 256 steps, minibatches of 256.
- Flow convention: noise at t = 0, action at t = 1, the plain velocity loss (o2o's
  `flow_matching_loss`), the same loss the BC pre-training minimises, so the ratio measures
  change from the pre-trained flow on its own terms. The reference flows from t = 1 to 0 and
  supervises the velocity through the predicted noise, with an output scale of 0.25.
- The CFM losses are of the executed action, clipped to the action bounds.
- The old losses are computed once at the start of each update, on pairs drawn then: the
  parameters do not change during a rollout, so this equals the reference's values stored at
  acting time.
- gamma 0.99 (the reference 0.995), the discount of the dataset's Monte-Carlo returns that
  pre-train V; no reward scaling (the reference's x10 suits Playground's small rewards);
  observations standardised by the dataset's statistics (`normalize_observations`, fixed)
  rather than running statistics. V is an MLP of 256 x 256 (the reference 5 x 256) with its
  own Adam: Adam is invariant to the reference's value-loss coefficient 0.25.

`q_values` returns V(s) for every action: FPO learns no Q, and the Q-bias diagnostics then
compare the state value with the Monte-Carlo return.
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
    gradient_step,
    register,
    scan_update_steps,
)
from o2o.agents.flow_bc import FlowBC
from o2o.nets.ensemble import StateValue
from o2o.nets.mlp import Activation
from o2o.nets.policies import FlowField, flow_matching_error


@dataclasses.dataclass(frozen=True)
class FPOConfig:
    """FPO hyperparameters (see the module notes for the recipe and its deviations)."""

    hidden_dims: tuple[int, ...] = (512, 512, 512, 512)  # the flow (FQL's BC flow)
    value_hidden_dims: tuple[int, ...] = (256, 256)
    activation: Activation = "silu"  # both networks', the reference's (ReLU before 2026-12-04)
    lr: float = 3e-4
    value_lr: float = 3e-4
    flow_steps: int = 10  # Euler steps from noise to action
    batch_size: int = 256  # offline minibatch, and the online PPO minibatch
    num_envs: int = 8  # vectorised environments collecting each rollout
    rollout_length: int = 256  # steps per environment per iteration
    epochs: int = 10  # passes over each rollout
    clip_epsilon: float = 0.05
    cfm_samples: int = 8  # (x_0, t) pairs per action for the CFM-loss ratio
    average_losses_before_exp: bool = True  # else one ratio per pair, log clipped to [-3, 3]
    gae_lambda: float = 0.95
    normalize_advantages: bool = True
    discount: float = 0.99
    normalize_observations: bool = True
    utd_ratio: int = 1  # offline: minibatches per update
    offline_ratio: float = 0.0  # on-policy: online updates see only the latest rollout
    start_steps: int = 0  # unused: every online step acts with the flow

    def __post_init__(self):
        counts = dict(
            flow_steps=self.flow_steps,
            batch_size=self.batch_size,
            num_envs=self.num_envs,
            rollout_length=self.rollout_length,
            epochs=self.epochs,
            cfm_samples=self.cfm_samples,
            utd_ratio=self.utd_ratio,
        )
        small = [f"{k}={v}" for k, v in counts.items() if v < 1]
        if small:
            raise ValueError(f"FPO: {', '.join(small)}; each must be at least 1")
        if not 0.0 < self.clip_epsilon < 1.0:
            raise ValueError(f"FPO: clip_epsilon={self.clip_epsilon} must be in (0, 1)")
        if not 0.0 <= self.gae_lambda <= 1.0:
            raise ValueError(f"FPO: gae_lambda={self.gae_lambda} must be in [0, 1]")


def gae(
    rewards: jax.Array,
    values: jax.Array,
    next_values: jax.Array,
    masks: jax.Array,
    dones: jax.Array,
    discount: float,
    lam: float,
) -> jax.Array:
    """Generalised advantage estimates over a rollout [T, ...] in time order.

    delta_t = r_t + gamma m_t V(s'_t) - V(s_t), with s'_t the step's own next state (the final
    state of an episode cut by a time limit, so a truncated episode bootstraps; m_t = 0 only at
    a terminal), and A_t = delta_t + gamma lambda (1 - done_t) A_{t+1}: advantages do not flow
    across an episode's end, whether terminal or truncated."""
    deltas = rewards + discount * masks * next_values - values

    def backward(next_advantage, step):
        delta, done = step
        advantage = delta + discount * lam * (1.0 - done) * next_advantage
        return advantage, advantage

    _, advantages = jax.lax.scan(backward, jnp.zeros_like(deltas[0]), (deltas, dones), reverse=True)
    return advantages


class FPO(ActsFromNoise, flax.struct.PyTreeNode):
    actor: TrainState
    value: TrainState
    rng: jax.Array
    config: FPOConfig = flax.struct.field(pytree_node=False)
    action_dim: int = flax.struct.field(pytree_node=False, default=1)

    @classmethod
    @compiled_create
    def create(
        cls, config: FPOConfig, obs_space: gym.spaces.Box, act_space: gym.spaces.Box, seed: int
    ) -> FPO:
        obs = jnp.zeros((1, *obs_space.shape), jnp.float32)
        act = jnp.zeros((1, act_space.shape[-1]), jnp.float32)
        key_actor, key_value, rng = jax.random.split(jax.random.key(seed), 3)
        actor_def = FlowField(act.shape[-1], config.hidden_dims, activation=config.activation)
        actor = TrainState.create(
            apply_fn=actor_def.apply,
            params=actor_def.init(key_actor, obs, act, jnp.zeros(1)),
            tx=optax.adam(config.lr),
        )
        value_def = StateValue(config.value_hidden_dims, activation=config.activation)
        value = TrainState.create(
            apply_fn=value_def.apply,
            params=value_def.init(key_value, obs),
            tx=optax.adam(config.value_lr),
        )
        return cls(actor=actor, value=value, rng=rng, config=config, action_dim=act.shape[-1])

    # Offline: flow BC and V on Monte-Carlo returns.

    bc_loss = FlowBC.bc_loss  # flow matching on dataset actions

    def mc_value_loss(self, params, batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        """E (V(s) - G)^2 with G the dataset's discounted Monte-Carlo return from s."""
        v = self.value.apply_fn(params, batch["observations"])
        loss = ((v - batch["mc_returns"]) ** 2).mean()
        return loss, {"value_loss": loss, "v_mean": v.mean()}

    def update_step(self, batch: dict[str, jax.Array]) -> tuple[FPO, dict[str, jax.Array]]:
        rng, key = jax.random.split(self.rng)
        actor, actor_info = gradient_step(self.actor, self.bc_loss, batch, key)
        value, value_info = gradient_step(self.value, self.mc_value_loss, batch)
        return self.replace(actor=actor, value=value, rng=rng), actor_info | value_info

    def update(self, batch: dict[str, jax.Array]) -> tuple[FPO, dict[str, jax.Array]]:
        """Offline: one step per minibatch on the leading axis (scanned); metrics averaged."""
        return scan_update_steps(self, batch)

    # Online: the FPO policy gradient on a rollout.

    def cfm_losses(self, params, observations, actions, x0, t) -> jax.Array:
        """Per action and (x_0, t) pair, the CFM error averaged over action dimensions:
        observations [B, D], actions [B, A], x0 [B, N, A], t [B, N] -> [B, N]."""
        n = x0.shape[-2]
        obs = jnp.repeat(observations[..., None, :], n, axis=-2)
        act = jnp.repeat(actions[..., None, :], n, axis=-2)
        return flow_matching_error(self.actor.apply_fn, params, obs, act, x0, t).mean(-1)

    def policy_loss(self, params, batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        """PPO's clipped surrogate with the CFM-loss ratio, on a minibatch holding the rollout's
        `observations`, `actions`, `advantages`, the pairs `x0`, `t` and their `old_losses`."""
        cfg = self.config
        new = self.cfm_losses(
            params, batch["observations"], batch["actions"], batch["x0"], batch["t"]
        )
        old = batch["old_losses"]
        if cfg.average_losses_before_exp:
            log_ratio = old.mean(-1, keepdims=True) - new.mean(-1, keepdims=True)
        else:
            log_ratio = jnp.clip(old - new, -3.0, 3.0)
        ratio = jnp.exp(log_ratio)
        advantages = batch["advantages"]
        if cfg.normalize_advantages:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        advantages = advantages[:, None]
        clipped = jnp.clip(ratio, 1.0 - cfg.clip_epsilon, 1.0 + cfg.clip_epsilon)
        loss = -jnp.minimum(ratio * advantages, clipped * advantages).mean()
        return loss, {
            "policy_loss": loss,
            "ratio_mean": ratio.mean(),
            "ratio_max": ratio.max(),
            "ratio_min": ratio.min(),
            "clip_fraction": (jnp.abs(ratio - 1.0) > cfg.clip_epsilon).mean(),
            "cfm_loss": new.mean(),
        }

    def value_loss(self, params, batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        """E (V(s) - (A + V_old(s)))^2: the GAE(lambda) return."""
        v = self.value.apply_fn(params, batch["observations"])
        loss = ((v - batch["returns"]) ** 2).mean()
        return loss, {"value_loss": loss, "v_mean": v.mean()}

    def policy_gradient_update(
        self, rollout: dict[str, jax.Array]
    ) -> tuple[FPO, dict[str, jax.Array]]:
        """`epochs` passes over a rollout (leaves [T, E, ...] in time order: `observations`,
        `actions` as executed, `rewards`, `next_observations` (an ended episode's final state),
        `masks` (0 at terminals), `dones` (terminal or truncated)) in shuffled minibatches of
        `batch_size` (one minibatch if the rollout is smaller); metrics averaged."""
        cfg = self.config
        rng, key_pairs, key_t, key_epochs = jax.random.split(self.rng, 4)
        values = self.value.apply_fn(self.value.params, rollout["observations"])
        next_values = self.value.apply_fn(self.value.params, rollout["next_observations"])
        advantages = gae(
            rollout["rewards"],
            values,
            next_values,
            rollout["masks"],
            rollout["dones"],
            cfg.discount,
            cfg.gae_lambda,
        )
        flat = jax.tree.map(
            lambda x: x.reshape(-1, *x.shape[2:]),
            {
                "observations": rollout["observations"],
                "actions": rollout["actions"],
                "advantages": advantages,
                "returns": advantages + values,
            },
        )
        n = flat["actions"].shape[0]
        pairs = (n, cfg.cfm_samples)
        flat["x0"] = jax.random.normal(key_pairs, (*pairs, self.action_dim))
        flat["t"] = jax.random.uniform(key_t, pairs)
        flat["old_losses"] = self.cfm_losses(
            self.actor.params, flat["observations"], flat["actions"], flat["x0"], flat["t"]
        )
        count = self.minibatches(n)
        size = n // count

        def minibatch_step(agent: FPO, batch):
            actor, actor_info = gradient_step(agent.actor, agent.policy_loss, batch)
            value, value_info = gradient_step(agent.value, agent.value_loss, batch)
            return agent.replace(actor=actor, value=value), actor_info | value_info

        def epoch(agent: FPO, key):
            order = jax.random.permutation(key, n)[: count * size].reshape(count, size)
            return jax.lax.scan(minibatch_step, agent, jax.tree.map(lambda x: x[order], flat))

        agent, info = jax.lax.scan(epoch, self, jax.random.split(key_epochs, cfg.epochs))
        info = jax.tree.map(jnp.mean, info)
        info |= {"advantage_mean": advantages.mean(), "advantage_std": advantages.std()}
        return agent.replace(rng=rng), info

    def minibatches(self, transitions: int) -> int:
        """Minibatches per epoch over a rollout of this many transitions (at least one)."""
        return max(1, transitions // self.config.batch_size)

    def updates_per_rollout(self, transitions: int) -> int:
        """Gradient steps `policy_gradient_update` takes on a rollout of this many transitions."""
        return self.config.epochs * self.minibatches(transitions)

    # Acts as flow BC does: the flow integrated from noise (`o2o.agents.flow_bc`).
    noise_shapes = FlowBC.noise_shapes
    actions_from_noise = FlowBC.actions_from_noise

    def q_values(self, observations: jax.Array, actions: jax.Array) -> jax.Array:
        """V(s), whatever the action: FPO learns no Q (see the module notes)."""
        return self.value.apply_fn(self.value.params, observations)

    def on_switch(self, config: Any = None) -> FPO:
        return self

    def needs(self, phase: Phase) -> Needs:
        """Offline: `mc_returns` for V. Online: on-policy rollouts (`o2o.train.onpolicy`)."""
        normalize = self.config.normalize_observations
        if phase == "offline":
            return Needs(batch_fields=frozenset({"mc_returns"}), normalize_observations=normalize)
        return Needs(loop="on_policy", normalize_observations=normalize)


register("fpo", FPO, FPOConfig(), "FPO: flow BC pre-training, then flow policy gradients (PPO)")
