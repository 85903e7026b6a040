"""Task registry: a short name maps to an environment, its datasets and its reference returns.

Normalised score = 100 * (return - random) / (expert - random). The reference returns of the
locomotion tasks are D4RL's (`d4rl/infos.py`, REF_MIN_SCORE / REF_MAX_SCORE), so scores sit on
the scale users know. They were measured on the v2 (mujoco-py) environments; o2o runs the
gymnasium v5 environments, whose dynamics differ slightly, so treat cross-version comparisons
as indicative. The zoo's own policies are reported in the same units (assets/policies).

A dataset is named `TASK-LEVEL` (`hopper-medium`); `parse_task` splits such names.
"""

from __future__ import annotations

import dataclasses
import os

import gymnasium as gym
import numpy as np

from o2o.data.dataset import Dataset, check_action_bounds

D4RL_SOURCE = "D4RL d4rl/infos.py REF_MIN_SCORE/REF_MAX_SCORE (random/expert returns, v2 envs)"
LOCOMOTION_LEVELS = ("random", "medium", "medium-replay", "expert", "medium-expert")


@dataclasses.dataclass(frozen=True)
class RewardTransform:
    """r -> scale * r + shift, applied to the rewards agents learn from (offline data and
    online transitions); evaluation returns and scores stay in the environment's units."""

    scale: float = 1.0
    shift: float = 0.0

    def __call__(self, rewards):
        return rewards * self.scale + self.shift

    def scaled(self, factor: float) -> RewardTransform:
        """This transform followed by multiplication by `factor`."""
        return RewardTransform(self.scale * factor, self.shift * factor)

    def inverse(self, rewards):
        """Back to the environment's units (e.g. to export a run's replay buffer)."""
        if self.scale == 0.0:
            raise ValueError("a reward transform with scale 0 cannot be inverted")
        return (rewards - self.shift) / self.scale

    @property
    def is_identity(self) -> bool:
        return self.scale == 1.0 and self.shift == 0.0


@dataclasses.dataclass(frozen=True)
class ObservationNormalizer:
    """s -> (s - mean) / std, fitted on the offline data (TD3+BC's recipe; CORL's awac, iql,
    bc). Applied to the dataset and, through `Task.make_env`, to every observation the agent
    sees online and in evaluation, so agents never handle raw states."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def fit(cls, observations: np.ndarray, eps: float = 1e-3) -> ObservationNormalizer:
        """Per-dimension mean and std (+ `eps`, as TD3+BC, so constant dimensions stay finite)."""
        mean, std = observations.mean(0), observations.std(0) + eps
        return cls(tuple(map(float, mean)), tuple(map(float, std)))

    def __call__(self, observations):
        mean, std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
        return ((observations - mean) / std).astype(np.float32)

    def inverse(self, observations):
        """Back to the environment's units (e.g. to export a run's replay buffer)."""
        mean, std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
        return (observations * std + mean).astype(np.float32)


IDENTITY = RewardTransform()
SPARSE_TO_MINUS_ONE = RewardTransform(1.0, -1.0)  # sparse {0, 1} -> {-1, 0} (IQL, Cal-QL)


@dataclasses.dataclass(frozen=True)
class Task:
    """An environment with its reference returns and the datasets o2o can make for it."""

    name: str
    env_id: str
    random_return: float
    expert_return: float
    reference_source: str
    max_episode_steps: int = 1000
    levels: tuple[str, ...] = LOCOMOTION_LEVELS
    default_level: str | None = None  # the level a bare task name loads; None: online only
    dataset_size: int = 1_000_000  # D4RL's default number of transitions
    medium_band: tuple[float, float] = (20.0, 50.0)  # normalised score of `medium` data
    reward_transform: RewardTransform = IDENTITY
    observation_normalizer: ObservationNormalizer | None = None  # set per run (learning_task)
    success_metric: bool = False  # report success_rate (sparse goal-reaching tasks)
    family: str = "locomotion"  # which of an agent's reference presets applies (o2o.agents)
    # Its data's terminals are successes inside recordings that go on (OGBench single tasks):
    # they stop the bootstrap, but windows of steps (QC's chunks) run through them.
    terminals_inside_recordings: bool = False

    def base_env(self) -> gym.Env:
        """The environment, with actions rescaled to [-1, 1] where its bounds differ."""
        return _unit_actions(gym.make(self.env_id, max_episode_steps=self.max_episode_steps))

    def make_env(self) -> gym.Env:
        """`base_env`, with observations normalised when the task has an
        `observation_normalizer`: the environment as the agent sees it."""
        env = self.base_env()
        if self.observation_normalizer is not None:
            space = env.observation_space
            env = gym.wrappers.TransformObservation(
                env, self.observation_normalizer, gym.spaces.Box(-np.inf, np.inf, space.shape)
            )
        return env

    def spaces(self) -> tuple[gym.spaces.Box, gym.spaces.Box]:
        """The environment's observation and action spaces (`base_env`'s)."""
        env = self.base_env()
        try:
            return env.observation_space, env.action_space
        finally:
            env.close()

    def env_spaces(self) -> tuple[gym.spaces.Box, gym.spaces.Box]:
        """The observation space and the environment's own action space, in its units, onto
        which the agents' [-1, 1] actions are mapped (`_unit_actions`)."""
        env = inner = self.base_env()
        try:
            while isinstance(inner, gym.Wrapper):
                if isinstance(inner, gym.wrappers.RescaleAction):
                    return env.observation_space, inner.env.action_space
                inner = inner.env
            return env.observation_space, env.action_space
        finally:
            env.close()

    def check_dataset(
        self, dataset: Dataset, spaces: tuple[gym.spaces.Box, gym.spaces.Box] | None = None
    ) -> Dataset:
        """`dataset` if it fits this task, as `o2o train`, `o2o dataset info` and `o2o dataset
        convert` all check it (after the format's own checks): observations and actions of the
        environment's dimensions, actions within its bounds; else DatasetError/ValueError.
        `spaces`: the task's (`spaces()`), when the caller has them already."""
        obs_space, act_space = spaces or self.spaces()
        for what, got, want in (
            ("observations", dataset.observation_dim, obs_space.shape[0]),
            ("actions", dataset.action_dim, act_space.shape[0]),
        ):
            if got != want:
                raise ValueError(
                    f"{dataset.source}: {what} have dim {got} but task '{self.name}' has "
                    f"{want}; pick the matching --task"
                )
        check_action_bounds(dataset.actions, act_space.low, act_space.high, dataset.source)
        return dataset

    @property
    def failure_reward(self) -> float | None:
        """On sparse goal-reaching tasks, the (transformed) reward of a step that has not
        reached the goal, for the all-failure Monte-Carlo constant; None on dense tasks."""
        return float(self.reward_transform(0.0)) if self.success_metric else None

    def preset_keys(self, level: str | None) -> tuple[str, ...]:
        """Where to look for an agent's reference recipe, most specific first: the dataset
        (TASK-LEVEL), the task, its family (`o2o.agents.base.AgentSpec.preset`)."""
        dataset = (f"{self.name}-{level}",) if level is not None else ()
        return (*dataset, self.name, self.family)

    def collection_stats(self, level: str, size: int | None, seed: int) -> dict:
        """How the level's data was collected, beyond what its transitions show (for `o2o
        dataset make|info`); empty where there is nothing more to say."""
        return {}

    def score(self, returns: np.ndarray, successes: np.ndarray) -> float:
        """The normalised score of a set of episodes: D4RL's scale on their mean return."""
        return self.normalize(float(np.mean(returns)))

    def normalize(self, episode_return: float) -> float:
        """D4RL-style normalised score (0 = random policy, 100 = expert)."""
        span = self.expert_return - self.random_return
        return 100.0 * (episode_return - self.random_return) / span

    def collect(self, level: str, size: int, seed: int, workers: int | None = None) -> Dataset:
        """`size` transitions of the zoo's `level` policy (D4RL's recipe: sampled actions),
        drawn by `workers` processes (the same data for any number; default: one per core,
        at most one per 50k transitions, since a process takes seconds to start);
        `medium-replay` re-collects the medium run's buffer and has its own size."""
        from o2o.data.generate import SampledActions, collect_medium_replay, rollout
        from o2o.zoo import load_policy, zoo_policy

        if level == "medium-replay":
            return collect_medium_replay(self, seed)
        policy = SampledActions(load_policy(zoo_policy(self.name, level)))
        if workers is None:
            workers = max(1, min(os.cpu_count() or 1, size // 50_000))
        source = f"generated {self.name}-{level} (seed {seed})"
        return rollout(self, policy, size, seed, source=source, workers=workers)


def _unit_actions(env: gym.Env) -> gym.Env:
    space = env.action_space
    if not (np.allclose(space.low, -1.0) and np.allclose(space.high, 1.0)):
        env = gym.wrappers.RescaleAction(env, -1.0, 1.0)
    return env


TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Add `task` to the registry (names must be unique)."""
    if task.name in TASKS:
        raise ValueError(f"task '{task.name}' is already registered")
    TASKS[task.name] = task
    return task


for _task in (
    Task("hopper", "Hopper-v5", -20.272305, 3234.3, D4RL_SOURCE),
    Task("halfcheetah", "HalfCheetah-v5", -280.178953, 12135.0, D4RL_SOURCE),
    Task("walker2d", "Walker2d-v5", 1.629008, 4592.3, D4RL_SOURCE),
    Task("ant", "Ant-v5", -325.6, 3879.7, D4RL_SOURCE),
):
    register_task(_task)
DEFAULT_TASK = "hopper"


def parse_task(name: str) -> tuple[Task, str | None]:
    """`hopper` -> (hopper, None); `hopper-medium` -> (hopper, "medium"). A bare name of a
    task whose data has one recipe (PointMaze) gets that task's default level. OGBench's
    single-task names (`scene-play-singletask-task2`) give that task and its data's level."""
    single = manipulation.parse_single_task(name)
    if single is not None:
        return single
    matches = [t for t in TASKS if name == t or name.startswith(t + "-")]
    if not matches:
        raise ValueError(f"unknown task '{name}'; known tasks: {', '.join(sorted(TASKS))}")
    task = TASKS[max(matches, key=len)]
    level = name[len(task.name) + 1 :] or task.default_level
    if level is not None and level not in task.levels:
        raise ValueError(
            f"task '{name}': unknown dataset level '{level}' for {task.name}; levels: "
            f"{', '.join(task.levels)}"
        )
    return task, level


def get_task(name: str) -> Task:
    """The task called `name` (a `TASK-LEVEL` dataset name gives its task)."""
    return parse_task(name)[0]


from o2o.envs import manipulation, maze  # noqa: E402,F401  register their tasks
