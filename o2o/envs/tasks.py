"""Task registry: a short name maps to a gymnasium environment and its reference returns.

Normalised score = 100 * (return - random) / (expert - random). The reference returns of the
locomotion tasks are D4RL's (`d4rl/infos.py`, REF_MIN_SCORE / REF_MAX_SCORE), so scores sit on
the scale users know. They were measured on the v2 (mujoco-py) environments; o2o runs the
gymnasium v5 environments, whose dynamics differ slightly, so treat cross-version comparisons
as indicative.
"""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np

D4RL_SOURCE = "D4RL d4rl/infos.py REF_MIN_SCORE/REF_MAX_SCORE (random/expert returns, v2 envs)"


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    env_id: str
    random_return: float
    expert_return: float
    reference_source: str
    max_episode_steps: int = 1000

    def make_env(self) -> gym.Env:
        """The environment, with actions rescaled to [-1, 1] where its bounds differ."""
        env = gym.make(self.env_id, max_episode_steps=self.max_episode_steps)
        space = env.action_space
        if not (np.allclose(space.low, -1.0) and np.allclose(space.high, 1.0)):
            env = gym.wrappers.RescaleAction(env, -1.0, 1.0)
        return env

    def normalize(self, episode_return: float) -> float:
        """D4RL-style normalised score (0 = random policy, 100 = expert)."""
        span = self.expert_return - self.random_return
        return 100.0 * (episode_return - self.random_return) / span


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("hopper", "Hopper-v5", -20.272305, 3234.3, D4RL_SOURCE),
        Task("halfcheetah", "HalfCheetah-v5", -280.178953, 12135.0, D4RL_SOURCE),
        Task("walker2d", "Walker2d-v5", 1.629008, 4592.3, D4RL_SOURCE),
        Task("ant", "Ant-v5", -325.6, 3879.7, D4RL_SOURCE),
    )
}
DEFAULT_TASK = "hopper"


def get_task(name: str) -> Task:
    """The task called `name`; `hopper-medium` style names name a dataset of that task."""
    base, _, level = name.partition("-")
    if base not in TASKS:
        known = ", ".join(sorted(TASKS))
        raise ValueError(f"unknown task '{name}'; known tasks: {known}")
    if level:
        raise ValueError(
            f"task '{name}' names a dataset level ('{level}'), and generated datasets are not "
            f"available yet; use --task {base} with --dataset PATH to a native .npz file"
        )
    return TASKS[base]
