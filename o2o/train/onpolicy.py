"""The online phase of on-policy agents (FPO): collect a rollout from vectorised environments
with the current policy, update on it, discard it.

Each iteration steps `num_envs` environments (gymnasium's `SyncVectorEnv`) `rollout_length`
times, acting for all of them in one jitted call, then hands the rollout to the agent's
`policy_gradient_update`. Environments reset in the same step an episode ends, and the
episode's final state is kept as that step's next state, so GAE bootstraps a time-limited
episode from its true last state and never across two episodes. The last iteration is cut
short so the run takes exactly `online_steps` environment steps when `num_envs` divides them.

Evaluation and checkpoints come after the iteration in which the step count crosses a multiple
of `eval_interval` (records carry the exact step count). A checkpoint holds the agent, its RNG
key and the counters; a resumed run starts fresh episodes and a fresh rollout.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import gymnasium as gym
import jax
import numpy as np

from o2o.checkpoint import checkpoint_to_resume, load_checkpoint
from o2o.train.online import OnlineLoop, RunProgress, episode_record


@jax.jit
def _act(agent, observations: jax.Array, key: jax.Array) -> jax.Array:
    return agent.sample_actions(observations, key)


@functools.partial(jax.jit, donate_argnums=0)
def _update(agent, rollout):
    return agent.policy_gradient_update(rollout)


class OnPolicyLoop(OnlineLoop):
    """On-policy training of `agent` on `task` (the agent's config sets `num_envs` and
    `rollout_length`); `run()` resumes from the run's checkpoint. The `sampler` is unused:
    updates see only the latest rollout."""

    def _restore(self) -> bool:
        self.key = jax.random.key(self.seed + 1)
        self.progress = RunProgress()
        found = checkpoint_to_resume(self.checkpoint_dir)
        if found is not None:
            template = (self.agent, self.key)
            (self.agent, self.key), saved = load_checkpoint(found, template)
            self.progress = RunProgress(**saved)
        return found is not None

    def _state(self) -> Any:
        return self.agent, self.key

    def _reward_data(self) -> list:
        return []  # rollouts are not kept: no bound on Q (FPO learns no critic)

    def _start(self) -> None:
        cfg = self.agent.config
        self.envs = gym.vector.SyncVectorEnv(
            [self.task.make_env] * cfg.num_envs,
            autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
        )
        seed = self.seed + 7919 * self.progress.env_steps
        self.obs = self.envs.reset(seed=seed)[0].astype(np.float32)
        self.episode_returns = np.zeros(cfg.num_envs)
        self.episode_successes = np.zeros(cfg.num_envs, bool)

    def _step(self) -> None:
        """One iteration: a rollout, then the agent's update on it."""
        cfg = self.agent.config
        remaining = self.online_steps - self.progress.env_steps
        length = min(cfg.rollout_length, math.ceil(remaining / cfg.num_envs))
        rollout = self.collect(length)
        self.agent, self.metrics = _update(self.agent, rollout)
        updates = self.agent.updates_per_rollout(length * cfg.num_envs)
        self.progress.updates += updates
        self.updates_interval += updates

    def collect(self, length: int) -> dict[str, np.ndarray]:
        """`length` steps of every environment with the current policy: leaves [length, E, ...]
        (`policy_gradient_update`'s rollout), rewards as the agent learns them."""
        steps: list[dict[str, np.ndarray]] = []
        for _ in range(length):
            self.key, key_act = jax.random.split(self.key)
            actions = np.asarray(_act(self.agent, self.obs, key_act))
            obs, rewards, terminated, truncated, info = self.envs.step(actions)
            obs = obs.astype(np.float32)
            done = terminated | truncated
            next_obs = obs.copy()
            if done.any():
                next_obs[done] = np.stack(info["final_obs"][done]).astype(np.float32)
            steps.append(
                {
                    "observations": self.obs,
                    "actions": actions,
                    "rewards": np.asarray(self.task.reward_transform(rewards), np.float32),
                    "next_observations": next_obs,
                    "masks": (1.0 - terminated).astype(np.float32),
                    "dones": done.astype(np.float32),
                }
            )
            self.episode_returns += rewards
            self.episode_successes |= _successes(info, len(actions))
            env_steps = self.progress.env_steps + len(actions)
            for i in np.flatnonzero(done):
                self.progress.episodes += 1
                self.logger.log_episode(
                    episode_record(
                        self.task,
                        self.step_offset + env_steps,
                        env_steps,
                        float(self.episode_returns[i]),
                        bool(self.episode_successes[i]),
                    )
                )
            self.episode_returns[done], self.episode_successes[done] = 0.0, False
            self.obs = obs
            self.progress.env_steps += len(actions)
        return {k: np.stack([s[k] for s in steps]) for k in steps[0]}


def _successes(info: dict, n: int) -> np.ndarray:
    """Per environment, whether this step reported success; for an episode that ended, its
    last step's info is under `final_info` (the reset's is at the top)."""
    flags = np.zeros(n, bool)
    for part in (info, info.get("final_info", {})):
        if "success" in part:
            reported = np.asarray(part.get("_success", np.ones(n, bool)), bool)
            flags |= np.asarray(part["success"], bool) & reported
    return flags
