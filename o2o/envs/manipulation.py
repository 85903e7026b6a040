"""OGBench manipulation (Park et al. 2025): a UR5e arm with cubes (`cube-single`,
`cube-double`), a scene of a cube, two locks, a drawer and a window (`scene`), and button
puzzles (`puzzle-3x3`, `puzzle-4x4`). Needs the optional `ogbench` extra.

Data (levels `play` and `noisy`) is drawn here with OGBench's own scripted oracles, following
its driver (`data_gen_scripts/generate_manipspace.py`, which the wheel does not ship):
- collection environment `<suite>-v0` in `data_collection` mode, no goal termination,
  episodes of exactly 1,001 steps; when the oracle reports its subtask done the driver asks the
  environment for a new target (`set_new_target(p_stack)`) and switches to the oracle of the
  new target's kind;
- `play`: plan oracles (keyframe plans, noise 0.1, smoothing 0.5); `noisy`: Markov oracles
  (`min_norm` 0.4) with per-episode noise xi ~ U(0, 0.1), N(0, [xi, xi, xi, 3 xi, 10 xi]) added
  to their actions, and a uniform random action with probability 0.1 (cube, scene) or 0.2
  (puzzle); puzzle oracles keep the gripper closed;
- p_stack per episode: 0 (cube-single), U(0, 0.25) (cube-double), 0.5 (scene; puzzle ignores
  it); a scene episode whose cube leaves the table (y >= 0.29, or y <= -0.3 away from drawer
  height) is drawn again;
- stored in OGBench's own layout (`observations`, `actions`, `terminals` at each episode's
  last row, `qpos`, `qvel` of the observation's state, `button_states` for scene and puzzle),
  train and `-val` files (a tenth as many episodes), so `ogbench.make_env_and_datasets` reads
  them as it reads the official files.

Deviation: every episode is seeded from (seed, split, episode), so a dataset is identical for
(suite, level, episodes, seed) whatever the number of worker processes; OGBench's driver seeds
nothing, so the official files are one draw from the same distribution (and were made with an
older MuJoCo). Random actions come from that seeded generator, not from the environment's
unseedable action space.

Single tasks (`scene-play-singletask-task2`, `cube-double-noisy-singletask`; the bare suite
name and no `-taskN` give OGBench's default task): the play data relabelled as OGBench does,
from the stored state s of each row against the task's goal: reward = subtasks done - subtasks
(0 when solved), terminal where all are done (so no bootstrap past success), and each
collection episode's last row dropped (its next observation is unknown). The environment is
OGBench's `<suite>-singletask-taskN-v0` (the episode ends at success). The score is the
success rate x 100.

Sparse variant (Q-chunking's `--sparse`, its tables' scene-sparse and puzzle-3x3-sparse): a
name ending in `-sparse` (before `-post`) gives reward -1 until the task is solved, then 0, in
the data and online alike.

Success timing: OGBench >= 1.2 scores the reward, termination and success of a step on the
state before the action (`pre`, the default here, consistent with the relabelled data); 1.1.x,
which the FQL and Q-chunking papers used, scored them after it. A task name ending in `-post`
(`scene-play-singletask-task2-post`) evaluates with the older timing.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import json
import multiprocessing
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np

from o2o.data.dataset import Dataset
from o2o.envs.tasks import Task, register_task

EPISODE_STEPS = 1001  # per collection episode, as OGBench's driver
PLAY_NOISE, PLAY_SMOOTHING = 0.1, 0.5
NOISY_XI_MAX = 0.1  # the noisy datasets' per-episode noise level ~ U(0, 0.1)
SUCCESS_RADIUS = 0.04  # a cube, drawer or window within 4 cm of its goal
ARM_QPOS = 14  # arm (6) and gripper (8) joints come first in qpos, then the objects
# Bump when the collection recipe changes, so cached files are not reused (and bump
# o2o.data.generate.DATASET_VERSION with it: the relabelled copies are cached there).
RAW_VERSION = 1
OGBENCH_SOURCE = (
    "OGBench single tasks: the score is the success rate x 100 over evaluation episodes "
    "(episodes end at success); returns are sums of (subtasks done - subtasks)"
)


def _ogbench():
    """The `ogbench` package (the optional `ogbench` extra), with its environments registered."""
    # Its spaces are built from float64 bounds, which gymnasium warns about at every make.
    warnings.filterwarnings("ignore", message=".*precision lowered by casting", module="gymnasium")
    os.environ.setdefault("MUJOCO_GL", "disable")  # o2o never renders; no display needed
    try:
        import ogbench.manipspace  # registers the environments
    except ImportError as err:
        raise ImportError(
            "OGBench manipulation tasks need the ogbench package: pip install 'o2o[ogbench]'"
        ) from err
    return ogbench


@dataclasses.dataclass(frozen=True)
class Suite:
    """One OGBench manipulation environment: how its data is collected and its tasks."""

    name: str
    time_limit: int  # of its single-task environments
    default_task: int
    kinds: tuple[str, ...]  # the subtask kinds its oracles handle
    p_stack: Callable[[np.random.Generator], float]
    p_random_action: float  # noisy datasets
    gripper_closed: bool = False  # puzzle oracles press buttons with a closed gripper
    health_check: bool = False  # scene: redraw episodes whose cube leaves the table

    @property
    def buttons(self) -> bool:
        return "button" in self.kinds


SUITES = {
    suite.name: suite
    for suite in (
        Suite("cube-single", 200, 2, ("cube",), lambda rng: 0.0, 0.1),
        Suite("cube-double", 500, 2, ("cube",), lambda rng: rng.uniform(0.0, 0.25), 0.1),
        Suite(
            "scene",
            750,
            2,
            ("cube", "button", "drawer", "window"),
            lambda rng: 0.5,
            0.1,
            health_check=True,
        ),
        Suite("puzzle-3x3", 500, 4, ("button",), lambda rng: 0.5, 0.2, gripper_closed=True),
        Suite("puzzle-4x4", 500, 4, ("button",), lambda rng: 0.5, 0.2, gripper_closed=True),
    )
}


def _oracles(env: gym.Env, suite: Suite, level: str) -> dict:
    """OGBench's scripted oracle per subtask kind, as its driver builds them."""
    _ogbench()
    if level == "play":
        from ogbench.manipspace.oracles.plan import button_plan, cube_plan, drawer_plan, window_plan

        kw = {"env": env, "noise": PLAY_NOISE, "noise_smoothing": PLAY_SMOOTHING}
        classes = {
            "cube": cube_plan.CubePlanOracle,
            "button": button_plan.ButtonPlanOracle,
            "drawer": drawer_plan.DrawerPlanOracle,
            "window": window_plan.WindowPlanOracle,
        }
    else:
        from ogbench.manipspace.oracles.markov import (
            button_markov,
            cube_markov,
            drawer_markov,
            window_markov,
        )

        kw = {"env": env, "min_norm": 0.4}
        classes = {
            "cube": cube_markov.CubeMarkovOracle,
            "button": button_markov.ButtonMarkovOracle,
            "drawer": drawer_markov.DrawerMarkovOracle,
            "window": window_markov.WindowMarkovOracle,
        }
    extra = {"button": {"gripper_always_closed": suite.gripper_closed}}  # puzzles: closed
    return {kind: classes[kind](**kw, **extra.get(kind, {})) for kind in suite.kinds}


def _healthy(suite: Suite, qpos: np.ndarray) -> bool:
    """OGBench's scene check: the cube stayed on the table (or went into the drawer)."""
    if not suite.health_check:
        return True
    y, z = qpos[:, ARM_QPOS + 1], qpos[:, ARM_QPOS + 2]
    off_table = (y >= 0.29) | ((y <= -0.3) & ((z < 0.06) | (z > 0.08)))
    return not off_table.any()


def collect_episodes(
    suite_name: str,
    level: str,
    seed: int,
    split: int,
    episodes: range,
    steps: int = EPISODE_STEPS,
) -> dict[str, np.ndarray]:
    """`episodes` (indices within `split`: 0 train, 1 validation) of the level's oracles, in
    OGBench's layout plus `completions` (subtasks finished per episode). Each episode is seeded
    from (seed, split, index, attempt), so any split of the indices into workers gives the
    same data."""
    suite = SUITES[suite_name]
    _ogbench()
    env = gym.make(
        f"{suite.name}-v0",
        terminate_at_goal=False,
        mode="data_collection",
        max_episode_steps=steps,
    )
    oracles = _oracles(env, suite, level)
    rows: dict[str, list] = {k: [] for k in ("observations", "actions", "qpos", "qvel")}
    rows |= {"button_states": [], "completions": []}
    for episode in episodes:
        for attempt in itertools.count():
            rng = np.random.default_rng([seed, split, episode, attempt])
            np.random.seed(rng.integers(2**32))  # the oracles draw from NumPy's global RNG
            ob, info = env.reset(seed=int(rng.integers(2**31)))
            p_stack = suite.p_stack(rng)
            xi = rng.uniform(0.0, NOISY_XI_MAX) if level == "noisy" else 0.0
            oracle = oracles[str(info["privileged/target_task"])]
            oracle.reset(ob, info)
            episode_rows: dict[str, list] = {k: [] for k in ("observations", "actions")}
            episode_rows |= {"qpos": [], "qvel": [], "button_states": []}
            completions, was_done = 0, False
            for _ in range(steps):
                if level == "noisy" and rng.random() < suite.p_random_action:
                    action = rng.uniform(-1.0, 1.0, 5)
                else:
                    action = np.asarray(oracle.select_action(ob, info), np.float64)
                    if level == "noisy":
                        action = action + rng.normal(0.0, [xi, xi, xi, 3 * xi, 10 * xi])
                action = np.clip(action, -1.0, 1.0)
                next_ob, reward, _, _, info = env.step(action)
                done = reward > 0  # collection mode: 1 while the current subtask is done
                completions += int(done and not was_done)
                was_done = done
                if oracle.done:
                    target_ob, target_info = env.unwrapped.set_new_target(p_stack=p_stack)
                    oracle = oracles[str(target_info["privileged/target_task"])]
                    oracle.reset(target_ob, target_info)
                    was_done = False
                episode_rows["observations"].append(ob)
                episode_rows["actions"].append(action)
                episode_rows["qpos"].append(info["prev_qpos"])
                episode_rows["qvel"].append(info["prev_qvel"])
                if suite.buttons:
                    episode_rows["button_states"].append(info["prev_button_states"])
                ob = next_ob
            if _healthy(suite, np.asarray(episode_rows["qpos"])):
                break
        for key, values in episode_rows.items():
            rows[key].extend(values)
        rows["completions"].append(completions)
    env.close()
    arrays = {
        key: np.asarray(rows[key], np.float32)
        for key in ("observations", "actions", "qpos", "qvel")
    }
    terminals = np.zeros((len(episodes), steps), bool)
    terminals[:, -1] = True
    arrays["terminals"] = terminals.reshape(-1)
    if suite.buttons:
        arrays["button_states"] = np.asarray(rows["button_states"], np.int64)
    arrays["completions"] = np.asarray(rows["completions"], np.int64)
    return arrays


def raw_paths(suite: str, level: str, episodes: int, seed: int) -> tuple[Path, Path]:
    """The cached train and validation files of a dataset, in OGBench's layout."""
    from o2o.data.generate import data_dir

    stem = f"ogbench-{suite}-{level}-{episodes}ep-seed{seed}-v{RAW_VERSION}"
    return data_dir() / f"{stem}.npz", data_dir() / f"{stem}-val.npz"


def stats_path(train_path: Path) -> Path:
    """Where a raw dataset's collection statistics are kept (`raw_stats`)."""
    return train_path.with_name(train_path.stem + "-stats.json")


def make_raw_dataset(
    suite_name: str,
    level: str,
    episodes: int,
    seed: int = 0,
    workers: int | None = None,
    steps: int = EPISODE_STEPS,
) -> tuple[Path, Path]:
    """The train (`episodes`) and validation (a tenth as many, at least one) files of
    `suite-level`, from the cache or collected in `workers` processes (default: one per
    core) and cached. Statistics go beside them (`stats.json`)."""
    from o2o.data.generate import collection_progress
    from o2o.logging import console

    suite = SUITES[suite_name]
    if level not in ("play", "noisy"):
        raise ValueError(f"{suite_name}: unknown dataset level '{level}'; levels: play, noisy")
    if episodes < 1:
        raise ValueError(f"{suite_name}-{level}: needs at least one episode, got {episodes}")
    train_path, val_path = raw_paths(suite.name, level, episodes, seed)
    if steps != EPISODE_STEPS:  # shorter episodes (tests) never share the cache
        train_path = train_path.with_name(train_path.stem + f"-{steps}steps.npz")
        val_path = train_path.with_name(train_path.stem + "-val.npz")
    if train_path.exists() and val_path.exists():
        return train_path, val_path
    _ogbench()
    workers = workers or os.cpu_count() or 1
    splits = {0: episodes, 1: max(1, episodes // 10)}
    chunk = max(1, min(10, (sum(splits.values()) + workers - 1) // workers))
    jobs = [
        (split, range(start, min(start + chunk, count)))
        for split, count in splits.items()
        for start in range(0, count, chunk)
    ]
    total = sum(splits.values()) * steps
    name = f"{suite.name}-{level}"
    parts: dict[tuple[int, int], dict] = {}
    bar, bar_task = collection_progress(f"collecting {name} ({workers} processes)", total)
    pool = (  # one worker: this process (the oracles' global RNG is then used by one job)
        concurrent.futures.ThreadPoolExecutor(1)
        if workers == 1
        else concurrent.futures.ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("spawn"),  # no fork of a JAX process
        )
    )
    with bar, pool:
        futures = {
            pool.submit(collect_episodes, suite.name, level, seed, split, part, steps): (
                split,
                part.start,
            )
            for split, part in jobs
        }
        for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
            parts[futures[future]] = future.result()
            bar.advance(bar_task, len(parts[futures[future]]["completions"]) * steps)
            if not console.is_terminal:  # a log file still sees the progress
                console.print(f"{name}: {done}/{len(jobs)} parts collected")
    stats = {}
    for split, path in ((0, train_path), (1, val_path)):
        keys = sorted(k for k in parts if k[0] == split)
        arrays = {
            field: np.concatenate([parts[k][field] for k in keys]) for field in parts[keys[0]]
        }
        completions = arrays.pop("completions")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
        np.savez_compressed(tmp, **arrays)
        tmp.replace(path)
        stats["train" if split == 0 else "val"] = raw_stats(arrays, completions)
    stats_path(train_path).write_text(json.dumps(stats, indent=1))
    console.print(
        f"{name}: {episodes} + {splits[1]} episodes of {steps} steps cached in {train_path} "
        f"(and -val); subtasks finished per episode {stats['train']['completions_mean']:.1f}"
    )
    return train_path, val_path


def raw_stats(arrays: dict[str, np.ndarray], completions: np.ndarray) -> dict:
    """What to compare with the official files: episodes, subtasks finished per episode,
    action mean and std per dimension."""
    actions = arrays["actions"]
    return {
        "episodes": int(arrays["terminals"].sum()),
        "rows": len(actions),
        "completions_mean": float(completions.mean()),
        "completions_min": int(completions.min()),
        "completions_max": int(completions.max()),
        "action_mean": [round(float(x), 4) for x in actions.mean(0)],
        "action_std": [round(float(x), 4) for x in actions.std(0)],
    }


def _episodes(size: int) -> int:
    """Collection episodes for `size` transitions (1,000 per episode after the last row)."""
    return max(1, size // (EPISODE_STEPS - 1))


@dataclasses.dataclass(frozen=True)
class ManipulationTask(Task):
    """One OGBench single task; see the module docstring."""

    random_return: float = 0.0
    expert_return: float = 1.0
    reference_source: str = OGBENCH_SOURCE
    levels: tuple[str, ...] = ("play", "noisy")
    default_level: str | None = "play"
    success_metric: bool = True
    family: str = "manipulation"
    suite: str = "scene"
    task_id: int = 2
    success_timing: str = "pre"
    sparse: bool = False  # Q-chunking's variant: reward -1 until solved, then 0
    terminals_inside_recordings: bool = True  # the play goes on after a success

    @property
    def failure_reward(self) -> float | None:
        """Dense rewards count unfinished subtasks, so no single reward means "failed" (none);
        the sparse variant's -1 does (in the learning units: after the reward transform)."""
        return float(self.reward_transform(-1.0)) if self.sparse else None

    def score(self, returns: np.ndarray, successes: np.ndarray) -> float:
        return 100.0 * float(np.mean(successes))

    def preset_keys(self, level: str | None) -> tuple[str, ...]:
        """The references tune per suite (FQL's alpha: 300 cube and scene, 1000 puzzles)."""
        return (self.name, self.suite, self.family)

    def collection_stats(self, level: str, size: int | None, seed: int) -> dict:
        """The collection episodes of the cached `level` data: subtasks finished per episode,
        action mean and std (to compare with the official files)."""
        train_path, _ = raw_paths(self.suite, level, _episodes(size or self.dataset_size), seed)
        path = stats_path(train_path)
        return json.loads(path.read_text())["train"] if path.exists() else {}

    def base_env(self) -> gym.Env:
        _ogbench()
        env = gym.make(
            self.env_id,
            success_timing=self.success_timing,
            max_episode_steps=self.max_episode_steps,
        )
        if self.sparse:
            env = gym.wrappers.TransformReward(env, lambda r: float(_sparse(r)))
        return env

    def goal(self) -> dict:
        """The task's goal state, from OGBench's task definition."""
        env = self.base_env()
        info = env.unwrapped.task_infos[self.task_id - 1]
        env.close()
        return info

    def subtask_successes(self, qpos: np.ndarray, button_states: np.ndarray | None) -> np.ndarray:
        """[rows, subtasks] whether each subtask is done in each stored state (OGBench's rule)."""
        goal = self.goal()
        objects = qpos[:, ARM_QPOS:]
        if self.suite.startswith("cube"):
            cubes = goal["goal_xyzs"]
            return np.stack(
                [
                    np.linalg.norm(objects[:, 7 * i : 7 * i + 3] - xyz, axis=-1) <= SUCCESS_RADIUS
                    for i, xyz in enumerate(cubes)
                ],
                axis=-1,
            )
        if self.suite == "scene":
            g = goal["goal"]
            cube = np.linalg.norm(objects[:, :3] - g["block_xyzs"][0], axis=-1) <= SUCCESS_RADIUS
            buttons = button_states == g["button_states"]
            drawer = np.abs(objects[:, 9] - g["drawer_pos"]) <= SUCCESS_RADIUS
            window = np.abs(objects[:, 10] - g["window_pos"]) <= SUCCESS_RADIUS
            return np.column_stack([cube, buttons, drawer, window])
        return button_states == goal["goal_button_states"]

    def relabel(self, arrays: dict[str, np.ndarray], source: str) -> Dataset:
        """OGBench-layout arrays as this task's transitions (see the module docstring)."""
        ends = arrays["terminals"].astype(bool)
        keep = ~ends  # each episode's last row has no next observation
        successes = self.subtask_successes(arrays["qpos"], arrays.get("button_states"))[keep]
        solved = successes.all(-1)
        rewards = (successes.sum(-1) - successes.shape[-1]).astype(np.float32)
        last_kept = np.roll(ends, -1)[keep]  # the row before each episode's last
        return Dataset.from_arrays(
            {
                "observations": arrays["observations"][keep],
                "actions": arrays["actions"][keep],
                "rewards": _sparse(rewards) if self.sparse else rewards,
                "next_observations": arrays["observations"][np.roll(keep, 1)],
                "terminals": solved,
                "timeouts": last_kept & ~solved,
            },
            source,
            -1.0,
            1.0,
        )

    def collect(self, level: str, size: int, seed: int, workers: int | None = None) -> Dataset:
        """The `level` data of this suite (size // 1000 collection episodes, at least one),
        relabelled for this task; collected in `workers` processes (see make_raw_dataset)."""
        train_path, _ = make_raw_dataset(self.suite, level, _episodes(size), seed, workers)
        with np.load(train_path) as npz:
            arrays = dict(npz)
        return self.relabel(arrays, f"generated {self.suite}-{level} (seed {seed}) for {self.name}")


def _sparse(rewards):
    """Q-chunking's sparse reward (`--sparse`): -1 unless every subtask is done, then 0."""
    return np.where(np.asarray(rewards) == 0, 0.0, -1.0).astype(np.float32)


SINGLE_TASK = re.compile(
    r"^(?P<suite>[a-z0-9-]+?)-(?P<level>play|noisy)-singletask(?:-task(?P<id>[1-5]))?"
    r"(?P<sparse>-sparse)?(?P<post>-post)?$"
)


def single_task(
    suite_name: str, task_id: int | None = None, timing: str = "pre", sparse: bool = False
) -> Task:
    """The task `suite-singletask-taskN` (the default task without N), success timed `timing`,
    with Q-chunking's sparse reward if `sparse`."""
    suite = SUITES[suite_name]
    task_id = task_id or suite.default_task
    name = f"{suite.name}-singletask-task{task_id}"
    name += ("-sparse" if sparse else "") + ("-post" if timing == "post" else "")
    return ManipulationTask(
        name=name,
        env_id=f"{suite.name}-singletask-task{task_id}-v0",
        max_episode_steps=suite.time_limit,
        suite=suite.name,
        task_id=task_id,
        success_timing=timing,
        sparse=sparse,
    )


def parse_single_task(name: str) -> tuple[Task, str] | None:
    """`scene-play-singletask-task2[-sparse][-post]` -> (that task, "play"); None for other
    names."""
    match = SINGLE_TASK.match(name)
    if match is None or match["suite"] not in SUITES:
        return None
    task_id = int(match["id"]) if match["id"] else None
    timing = "post" if match["post"] else "pre"
    return single_task(match["suite"], task_id, timing, bool(match["sparse"])), match["level"]


for _suite in SUITES:  # the bare suite names: their default task
    register_task(dataclasses.replace(single_task(_suite), name=_suite))
