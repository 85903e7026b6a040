"""Q-chunking (Li, Zhou, Levine 2025, "Reinforcement Learning with Action Chunking"), as in
ColinQiyangLi/qc (`agents/acfql.py` with `actor_type='best-of-n'`, `main.py`).

QC acts in chunks of h actions executed open-loop, and values whole chunks:
- prior: a flow-matching BC policy over the data's chunks a_{t:t+h}, flattened step-major to
  h x |A| numbers; each step's error is weighted by `valid` (steps after an episode's end do
  not count);
- critic: Q(s_t, a_{t:t+h}), regressed on the n-step target
  sum_{i<h} gamma^i r_{t+i} + gamma^h m Q'(s_{t+h}, a'), with Q' the target critics reduced by
  `q_agg` (mean or min) and a' the chunk the agent would act with at s_{t+h}. The squared
  error is weighted by valid[-1]: chunks that cross an episode's end before their last step
  drop out. On OGBench single tasks a success (a terminal, m = 0) is no end: the play
  recording goes on, and chunks run through it as the reference's `sample_sequence` does
  (`Task.terminals_inside_recordings`). The chunk is the agent's whole action, so this
  n-step backup needs no off-policy correction;
- acting (best-of-N): N chunks from the prior (Euler steps from Gaussian noise), the one with
  the highest Q kept. The actor's loss has no Q term (ColinQiyangLi/qc#12).
With h = 1 it is best-of-N over a flow BC prior with a one-step critic, trained on ordinary
single-step batches.

Recipe (`get_config` and the `main.py` flags): h 5, N 32, 10 flow steps, 4 x 512 GELU MLPs
for the prior and the 2 critics, LayerNorm (after each activation) in the critics only, mean
aggregation, Adam 3e-4, batch 256, gamma 0.99, tau 0.005, UTD 1; online, updates start after
5,000 steps. This is the README's OGBench manipulation command, so the `manipulation` preset is
the default. Its `--sparse=True` (scene, puzzle-3x3: reward -1 unless solved) is the task
variant `...-singletask-taskN-sparse` (`o2o.envs.manipulation`).

Choices and deviations:
- Online the prior is frozen (`freeze_prior`, through `switch_parts`): only the critic learns,
  and the policy improves through the best-of-N selection alone. The reference keeps cloning
  the mixed buffer online; `--agent.no-freeze-prior` does that. Without an offline phase there
  is no switch, and the prior learns online.
- Data mix: the reference appends online data to the dataset buffer, i.e. `--data-mix
  proportional`. o2o's default `fixed` mix uses `offline_ratio` 0.5: the share of the
  reference's `main_online.py`, and the one proportional mixing reaches when the online
  steps equal the dataset's size (the reference's 1M + 1M runs).
- Warm-up: the reference acts with the agent during the 5,000 steps before updates, so
  `random_warmup` is False (o2o's default warm-up acts uniformly at random).
- Windows start at any valid row, the data's last h - 1 included (their missing steps are not
  valid), where the reference draws starts among the first size - h + 1 rows; in-chunk
  rewards stop at an episode's end (the reference sums past it, in chunks weighted out of the
  critic loss anyway). See `o2o.data.buffer.ReplayBuffer.sample_windows`.
- One Adam optimiser per part, where the reference steps one over both: Adam acts per
  parameter and the two losses share none, so the steps are the same. The target critic moves
  towards the critic after its update (the reference: before it, one step behind).
- `deterministic` has nothing to pick (as flow BC): evaluation passes a fixed key.
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
    switch_parts,
)
from o2o.nets.ensemble import StateActionValue, ensemble_state, reduce_members
from o2o.nets.mlp import Activation
from o2o.nets.policies import FlowField, flow_actions, flow_matching_loss


@dataclasses.dataclass(frozen=True)
class QCConfig:
    """QC hyperparameters; the defaults are the reference recipe (see the module notes)."""

    horizon: int = 5  # h: actions per chunk, executed open-loop
    num_samples: int = 32  # N: chunks drawn from the prior per decision
    flow_steps: int = 10  # Euler steps from noise to chunk
    hidden_dims: tuple[int, ...] = (512, 512, 512, 512)  # the prior's and each critic's
    critic_layer_norm: bool = True  # after each activation, as the reference's MLP
    activation: Activation = "gelu"
    num_critics: int = 2
    q_agg: Literal["mean", "min"] = "mean"  # how the target and best-of-N reduce the critics
    lr: float = 3e-4
    discount: float = 0.99
    tau: float = 0.005
    batch_size: int = 256
    utd_ratio: int = 1
    offline_ratio: float = 0.5  # with --data-mix fixed (the reference: proportional)
    start_steps: int = 5000  # online steps before updates start
    random_warmup: bool = False  # the warm-up acts with the agent, as the reference
    freeze_prior: bool = True  # online, only the critic learns
    normalize_observations: bool = False

    def __post_init__(self):
        for name in (
            "horizon",
            "num_samples",
            "flow_steps",
            "num_critics",
            "batch_size",
            "utd_ratio",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")
        if self.q_agg not in ("mean", "min"):
            raise ValueError(f"q_agg={self.q_agg!r} must be 'mean' or 'min'")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"tau={self.tau} must lie in (0, 1]")
        if not 0.0 < self.discount <= 1.0:
            raise ValueError(f"discount={self.discount} must lie in (0, 1]")
        if self.start_steps < 0:
            raise ValueError(f"start_steps={self.start_steps} must be at least 0")


def chunk_batch(
    batch: dict[str, jax.Array], horizon: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(chunks [n, h * A] step-major, rewards [n, h], valid [n, h]) of a batch of windows
    (`ReplayBuffer.sample_windows`); with h = 1, a single-step batch is a window of one step."""
    if "valid" not in batch:
        if horizon > 1:
            raise ValueError(
                f"QC with horizon {horizon} trains on windows of {horizon} steps (sample "
                "with `horizon`), not on single transitions"
            )
        rewards = batch["rewards"][..., None]
        return batch["actions"], rewards, jnp.ones_like(rewards)
    valid = batch["valid"]
    if valid.shape[-1] != horizon:
        raise ValueError(f"QC with horizon {horizon} got windows of {valid.shape[-1]} steps")
    return batch["actions"].reshape(*valid.shape[:-1], -1), batch["rewards"], valid


class QC(ActsFromNoise, flax.struct.PyTreeNode):
    actor: TrainState  # the flow prior over flattened chunks
    critic: TrainState  # Q(s, chunk), an ensemble
    target_critic_params: Any
    rng: jax.Array
    config: QCConfig = flax.struct.field(pytree_node=False)
    action_dim: int = flax.struct.field(pytree_node=False, default=1)

    @classmethod
    @compiled_create
    def create(
        cls, config: QCConfig, obs_space: gym.spaces.Box, act_space: gym.spaces.Box, seed: int
    ) -> QC:
        action_dim = act_space.shape[-1]
        obs = jnp.zeros((1, *obs_space.shape), jnp.float32)
        chunk = jnp.zeros((1, config.horizon * action_dim), jnp.float32)
        key_actor, key_critic, rng = jax.random.split(jax.random.key(seed), 3)
        actor_def = FlowField(chunk.shape[-1], config.hidden_dims, activation=config.activation)
        actor = TrainState.create(
            apply_fn=actor_def.apply,
            params=actor_def.init(key_actor, obs, chunk, jnp.zeros(1)),
            tx=optax.adam(config.lr),
        )
        critic_def = StateActionValue(
            config.hidden_dims, config.critic_layer_norm, config.activation, norm_first=False
        )
        critic = ensemble_state(
            critic_def, key_critic, config.num_critics, optax.adam(config.lr), obs, chunk
        )
        return cls(
            actor=actor,
            critic=critic,
            target_critic_params=jax.tree.map(jnp.copy, critic.params),
            rng=rng,
            config=config,
            action_dim=action_dim,
        )

    def _reduce(self, qs: jax.Array) -> jax.Array:
        """The critics' outputs [members, ...] reduced by `q_agg`."""
        return reduce_members(qs, self.config.q_agg)

    def prior_loss(self, actor_params, batch, key) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Flow matching on the data's chunks, each step's squared error weighted by `valid`,
        averaged over rows, steps and action dimensions."""
        chunks, _, valid = chunk_batch(batch, self.config.horizon)
        errors = flow_matching_loss(
            self.actor.apply_fn, actor_params, batch["observations"], chunks, key
        )
        loss = jnp.mean(errors.reshape(*valid.shape, -1) * valid[..., None])
        return loss, {"bc_flow_loss": loss}

    def critic_loss(self, critic_params, batch, key) -> tuple[jax.Array, dict[str, jax.Array]]:
        """E[valid_{h-1} (Q_i(s, a_{t:t+h}) - y)^2] over rows and critics, with
        y = sum_{i<h} gamma^i r_{t+i} + gamma^h m agg_j Q'_j(s', a'), a' the best-of-N chunk at
        s' (the next observation after the chunk)."""
        cfg = self.config
        chunks, rewards, valid = chunk_batch(batch, cfg.horizon)
        next_obs = batch["next_observations"]
        next_chunks = self.sample_actions(next_obs, key)
        next_qs = self.critic.apply_fn(self.target_critic_params, next_obs, next_chunks)
        chunk_rewards = rewards @ cfg.discount ** jnp.arange(cfg.horizon)
        target = chunk_rewards + cfg.discount**cfg.horizon * batch["masks"] * self._reduce(next_qs)
        q = self.critic.apply_fn(critic_params, batch["observations"], chunks)
        loss = jnp.mean((q - jax.lax.stop_gradient(target)) ** 2 * valid[:, -1])
        return loss, {"critic_loss": loss, "q_mean": q.mean(), "target_mean": target.mean()}

    def update_step(self, batch: dict[str, jax.Array]) -> tuple[QC, dict[str, jax.Array]]:
        """One step of the critic (then its target) and of the prior, on one minibatch."""
        rng, key_critic, key_prior = jax.random.split(self.rng, 3)
        critic, critic_info = gradient_step(self.critic, self.critic_loss, batch, key_critic)
        actor, prior_info = gradient_step(self.actor, self.prior_loss, batch, key_prior)
        agent = self.replace(
            actor=actor,
            critic=critic,
            target_critic_params=optax.incremental_update(
                critic.params, self.target_critic_params, self.config.tau
            ),
            rng=rng,
        )
        return agent, critic_info | prior_info

    def update(self, batch: dict[str, jax.Array]) -> tuple[QC, dict[str, jax.Array]]:
        """One step per minibatch on the leading axis (scanned); metrics averaged."""
        return scan_update_steps(self, batch)

    def noise_shapes(self, batch_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        cfg = self.config
        return {"normal": (*batch_shape, cfg.num_samples, cfg.horizon * self.action_dim)}

    def actions_from_noise(self, observations: jax.Array, noise: dict[str, jax.Array]) -> jax.Array:
        """Best-of-N: `num_samples` chunks from the prior, one per row of the noise, the one
        the critics value highest kept; shape [..., horizon * A], step-major."""
        n = self.config.num_samples
        obs = jnp.broadcast_to(
            observations[..., None, :], (*observations.shape[:-1], n, observations.shape[-1])
        )
        chunks = flow_actions(
            self.actor.apply_fn, self.actor.params, obs, noise["normal"], self.config.flow_steps
        )
        best = self._reduce(self.critic.apply_fn(self.critic.params, obs, chunks)).argmax(-1)
        return jnp.take_along_axis(chunks, best[..., None, None], axis=-2)[..., 0, :]

    def q_values(self, observations: jax.Array, actions: jax.Array) -> jax.Array:
        """Q of chunks ([..., h * A] or [..., h, A]), reduced by `q_agg`: what acting
        maximises."""
        chunks = actions.reshape(*observations.shape[:-1], -1)
        return self._reduce(self.critic.apply_fn(self.critic.params, observations, chunks))

    def on_switch(self, config: Any = None) -> QC:
        """With `freeze_prior`, freeze the prior: online, only the critic learns."""
        if (config or self.config).freeze_prior:
            return switch_parts(self, freeze=("actor",))
        return self

    def needs(self, phase: Phase) -> Needs:
        """Windows of `horizon` steps; the warm-up acts with the agent unless `random_warmup`."""
        cfg = self.config
        return Needs(
            horizon=cfg.horizon,
            random_warmup=cfg.random_warmup,
            normalize_observations=cfg.normalize_observations,
        )


register(
    "qc",
    QC,
    {"default": QCConfig(), "manipulation": QCConfig()},  # the reference's OGBench recipe
    "Q-chunking: best-of-N chunks from a flow prior, chunked critic",
)
