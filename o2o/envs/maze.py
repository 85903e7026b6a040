"""PointMaze tasks (D4RL maze2d, on gymnasium-robotics' PointMaze v3): drive a point mass from a
fixed start cell to a fixed goal cell.

Evaluation: the episode starts in `start_cell` (gymnasium-robotics' uniform +-0.25 position
noise, so evaluation seeds differ slightly), the goal is the centre of `goal_cell` (no noise),
the reward is 1 within 0.45 of it and the episode terminates there. The policy sees only
(x, y, vx, vy): the goal never moves, so, as in D4RL maze2d, it need not be observed. Returns
are therefore 1 (reached) or 0, and the normalised score is the success rate times 100.

Data (level `planner`, D4RL's maze2d recipe): a waypoint planner drives to random commanded
cells with Gaussian action noise, in 1000-step collection episodes from random start cells.
Rewards and terminals are relabelled for the evaluation goal; see `MazeTask.collect`.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque

import gymnasium as gym
import numpy as np

from o2o.data.dataset import Dataset
from o2o.envs.tasks import SPARSE_TO_MINUS_ONE, RewardTransform, Task, register_task

GOAL_RADIUS = 0.45  # gymnasium-robotics' success distance
KP, KD = 10.0, 1.0  # D4RL waypoint_controller gains (p_gain=10, d_gain=-1)
ACTION_NOISE = 0.5  # std of the Gaussian action noise of D4RL's (noisy) maze2d datasets
COMMAND_RADIUS = 0.1  # the planner's commanded cell counts as reached (D4RL solve_thresh)
START_NOISE = 0.25  # uniform start noise around a cell centre, as gymnasium-robotics
COLLECT_EPISODE_STEPS = 1000
MAZE_SOURCE = (
    "o2o: return = success (0 or 1, the episode ends at the goal), so random 0 and expert 1 "
    "make the normalised score the success rate x 100; D4RL's maze2d references do not apply "
    "(its episodes go on after the goal)"
)


def _register_robotics_envs() -> None:
    """Register gymnasium-robotics' envs, imported on first use: it is the optional
    `robotics` extra."""
    try:
        import gymnasium_robotics
    except ImportError as err:
        raise ImportError(
            "PointMaze tasks need gymnasium-robotics: pip install 'o2o[robotics]'"
        ) from err
    gym.register_envs(gymnasium_robotics)


class FixedGoalMaze(gym.Wrapper):
    """Every episode starts in `start_cell` with the goal exactly at the centre of `goal_cell`,
    and the agent observes (x, y, vx, vy) only; `reset`'s options are ignored."""

    def __init__(self, env: gym.Env, start_cell: tuple[int, int], goal_cell: tuple[int, int]):
        super().__init__(env)
        self.observation_space = env.observation_space["observation"]
        self._options = {"reset_cell": np.array(start_cell), "goal_cell": np.array(goal_cell)}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        obs, info = self.env.reset(seed=seed, options=self._options)
        maze_env = self.env.unwrapped
        # gymnasium-robotics also jitters the goal; an unobserved goal must stay put.
        maze_env.goal = maze_env.maze.cell_rowcol_to_xy(self._options["goal_cell"])
        maze_env.update_target_site_pos()
        return obs["observation"], info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs["observation"], reward, terminated, truncated, info


class WaypointPlanner:
    """D4RL's maze2d controller: breadth-first search over the maze's cells gives the next cell
    towards the commanded one; a PD controller steers to that cell's centre."""

    def __init__(self, maze_map: list[list]):
        self.free = [(i, j) for i, row in enumerate(maze_map) for j, c in enumerate(row) if c != 1]
        # PointMaze cells are 1 x 1, the maze centred on the origin, rows going down in y.
        self.x0, self.y0 = len(maze_map[0]) / 2, len(maze_map) / 2
        self._next: dict[tuple[int, int], dict[tuple[int, int], tuple[int, int]]] = {}

    def centre(self, cell: tuple[int, int]) -> np.ndarray:
        """(x, y) of a cell's centre (gymnasium-robotics' `cell_rowcol_to_xy`)."""
        i, j = cell
        return np.array([j + 0.5 - self.x0, self.y0 - i - 0.5])

    def cell(self, xy: np.ndarray) -> tuple[int, int]:
        """The (row, column) cell holding `xy`."""
        return math.floor(self.y0 - xy[1]), math.floor(xy[0] + self.x0)

    def _next_cells(self, goal: tuple[int, int]) -> dict[tuple[int, int], tuple[int, int]]:
        """For every free cell, its neighbour on a shortest path to `goal` (BFS from goal)."""
        if goal not in self._next:
            free, step, queue = set(self.free), {goal: goal}, deque([goal])
            while queue:
                i, j = queue.popleft()
                for n in ((i + 1, j), (i - 1, j), (i, j + 1), (i, j - 1)):
                    if n in free and n not in step:
                        step[n] = (i, j)
                        queue.append(n)
            self._next[goal] = step
        return self._next[goal]

    def action(self, observation: np.ndarray, goal: tuple[int, int]) -> np.ndarray:
        """Noise-free action steering towards `goal` from observation (x, y, vx, vy)."""
        position, velocity = observation[:2], observation[2:4]
        waypoint = self.centre(self._next_cells(goal)[self.cell(position)])
        return np.clip(KP * (waypoint - position) - KD * velocity, -1.0, 1.0)


@dataclasses.dataclass(frozen=True)
class MazeTask(Task):
    """A PointMaze task: fixed start and goal cells (row, column) of the gymnasium-robotics map.

    Returns are 0 or 1 (the episode terminates on reaching the goal), so with random_return 0
    and expert_return 1 the normalised score is the success rate x 100.
    """

    random_return: float = 0.0
    expert_return: float = 1.0
    reference_source: str = MAZE_SOURCE
    levels: tuple[str, ...] = ("planner",)
    default_level: str | None = "planner"
    reward_transform: RewardTransform = SPARSE_TO_MINUS_ONE
    success_metric: bool = True
    family: str = "navigation"  # sparse-reward goal reaching: the agents' AntMaze recipes
    start_cell: tuple[int, int] = (0, 0)
    goal_cell: tuple[int, int] = (0, 0)

    def _maze_env(self, max_episode_steps: int) -> gym.Env:
        _register_robotics_envs()
        return gym.make(
            self.env_id,
            max_episode_steps=max_episode_steps,
            reward_type="sparse",
            continuing_task=False,
            reset_target=False,
        )

    def base_env(self) -> gym.Env:
        """The evaluation environment (see the module docstring)."""
        env = self._maze_env(self.max_episode_steps)
        return FixedGoalMaze(env, self.start_cell, self.goal_cell)

    def planner(self) -> WaypointPlanner:
        """The data's waypoint planner on this task's maze."""
        _register_robotics_envs()
        return WaypointPlanner(gym.spec(self.env_id).kwargs["maze_map"])

    def collect(self, level: str, size: int, seed: int, workers: int | None = None) -> Dataset:
        """`size` transitions of the noisy waypoint planner (D4RL maze2d recipe), in this
        process (the planner is fast: `workers` is not needed).

        Each collection episode starts at rest in a random free cell other than the goal's
        (+-0.25 noise); the planner drives to a random commanded cell and picks a new one on
        reaching it. Rows are labelled for the evaluation task, as its env's step would label
        them: reward 1 and terminal where the next position is within 0.45 of the goal. A
        terminal ends the collection episode (the next row starts a new one), as it ends an
        evaluation episode, so the data holds no transitions from inside the goal region,
        which evaluation never visits; otherwise an episode is cut after 1000 steps
        (timeouts=1). Rewards are stored raw in {0, 1}; `reward_transform` maps them to
        {-1, 0} for training.
        """
        from o2o.data.generate import collection_progress

        if level != "planner":
            raise ValueError(f"{self.name}: unknown dataset level '{level}'; levels: planner")
        env = self._maze_env(COLLECT_EPISODE_STEPS)
        point = env.unwrapped.point_env  # stepped directly: same dynamics, no wrapper cost
        planner = self.planner()
        goal = planner.centre(self.goal_cell)
        starts = [cell for cell in planner.free if cell != self.goal_cell]
        rng = np.random.default_rng(seed)
        rows = {
            "observations": np.empty((size, 4), np.float32),
            "actions": np.empty((size, 2), np.float32),
            "next_observations": np.empty((size, 4), np.float32),
        }
        rewards, timeouts = np.zeros(size, np.float32), np.zeros(size, bool)
        source = f"generated {self.name}-{level} (seed {seed})"
        bar, bar_task = collection_progress(f"collecting {source}", size)
        done = True
        with bar:
            for t in range(size):
                if done:
                    xy = planner.centre(starts[rng.integers(len(starts))])
                    xy += rng.uniform(-START_NOISE, START_NOISE, 2)
                    point.set_state(xy, np.zeros(2))
                    obs, step = np.concatenate([xy, np.zeros(2)]), 0
                    command = planner.free[rng.integers(len(planner.free))]
                while np.linalg.norm(obs[:2] - planner.centre(command)) < COMMAND_RADIUS:
                    command = planner.free[rng.integers(len(planner.free))]
                action = planner.action(obs, command) + rng.normal(0.0, ACTION_NOISE, 2)
                action = np.clip(action, -1.0, 1.0)
                next_obs = point.step(action)[0]
                rows["observations"][t], rows["actions"][t] = obs, action
                rows["next_observations"][t] = next_obs
                rewards[t] = np.linalg.norm(next_obs[:2] - goal) <= GOAL_RADIUS
                step += 1
                timeouts[t] = step == COLLECT_EPISODE_STEPS and not rewards[t]
                done, obs = bool(rewards[t] or timeouts[t]), next_obs
                if t % 10_000 == 9_999 or t == size - 1:
                    bar.update(bar_task, completed=t + 1)
        env.close()
        arrays = {**rows, "rewards": rewards, "terminals": rewards == 1, "timeouts": timeouts}
        return Dataset.from_arrays(arrays, source, -1.0, 1.0)


# Goal cells are D4RL maze2d's ('G' in its maps, which gymnasium-robotics copies); the start
# cells are the free cells farthest from them along the maze: 6, 10 and 18 cells away.
for _task in (
    MazeTask(
        "pointmaze-umaze",
        "PointMaze_UMaze-v3",
        max_episode_steps=300,
        start_cell=(3, 1),
        goal_cell=(1, 1),
    ),
    MazeTask(
        "pointmaze-medium",
        "PointMaze_Medium-v3",
        max_episode_steps=600,
        start_cell=(1, 1),
        goal_cell=(6, 6),
    ),
    MazeTask(
        "pointmaze-large",
        "PointMaze_Large-v3",
        max_episode_steps=800,
        start_cell=(7, 1),
        goal_cell=(7, 9),
    ),
):
    register_task(_task)
