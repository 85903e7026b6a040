"""D4RL-style datasets made on this machine: behaviour-policy rollouts, cached on disk.

Levels follow D4RL (Fu et al. 2020): `random` (the untrained, randomly initialised policy),
`medium` (a policy at about one third of expert return), `expert`, `medium-replay` (the
replay buffer of the run that trained the medium policy, up to that policy) and
`medium-expert` (medium and expert data, `size` of each, so 2M transitions by default as in
D4RL).

Deviation for `medium-replay`: D4RL ships the buffer itself; o2o regenerates it, because the
buffers are too large to ship (Hopper's, 190k transitions, is 18 MB compressed; Ant's
observations are ten times wider).
The zoo keeps the medium run's policy snapshots (every 10k steps) and the number of uniform
random warm-up steps; the buffer is re-collected in one environment stream, step t by the
snapshot nearest to t (off by at most 5k steps, on average none). Checked on walker2d against
the true buffer (115k transitions): 640 vs 637 episodes, mean return 322 vs 320.

Actions are sampled from the stochastic policy. Episodes end at a true terminal, at the
task's time limit (timeouts=1), or where a collection stream reaches its quota (neither flag:
the next row starts another stream, which the `observations[t+1]` rule detects).

Every dataset is deterministic for (task, level, size, seed) and the policy file, and cached
as a native `.npz` under `$O2O_DATA_DIR` (default `~/.cache/o2o/datasets`). The behaviour
policy always acts on the CPU, so a GPU's differently rounded matrix products never enter a
file. JAX's version can still change a last bit, and a rollout keeps the difference until its
episode ends: hopper-medium 1M drawn with JAX 0.11.2 differs from JAX 0.10.2's in one action's
last bit (row 657,760) and so in 232 transitions of that episode, on the same CPU
(halfcheetah-medium's files are identical). The name does not record the version, so a cached
file is reused across versions; its `meta` records the JAX and MuJoCo versions that drew it.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, wait
from importlib.metadata import version
from pathlib import Path

import jax
import numpy as np
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from o2o.data.dataset import FIELDS, Dataset
from o2o.data.formats import load_native, save_native
from o2o.envs.tasks import Task, parse_task
from o2o.logging import console
from o2o.zoo import ZOO_LEVELS, Policy, load_policy_chain, zoo_dir, zoo_policy

DATASET_VERSION = 2  # bump when a recipe changes, so cached files are not reused
NUM_ENVS = 16  # environments stepped in lock-step (one batched policy call per step)


def data_dir() -> Path:
    return Path(os.environ.get("O2O_DATA_DIR", Path.home() / ".cache" / "o2o" / "datasets"))


def collection_progress(description: str, total: int) -> tuple[Progress, int]:
    """A rich progress bar for collecting `total` transitions, and its task id."""
    progress = Progress(
        TextColumn(f"[bold]{description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )
    return progress, progress.add_task(description, total=total)


class SampledActions:
    """`rollout`'s policy for a zoo policy: its sampled actions (D4RL's recipe). A class, not
    a closure, so that collection workers can be sent it."""

    def __init__(self, policy: Policy):
        self.policy = policy

    def __call__(self, observations: np.ndarray, key: jax.Array, t: int) -> np.ndarray:
        return self.policy.act(observations, key)


def rollout(
    task: Task,
    policy: Callable[[np.ndarray, jax.Array, int], np.ndarray],
    size: int,
    seed: int,
    source: str,
    num_envs: int = NUM_ENVS,
    workers: int = 1,
) -> Dataset:
    """`size` transitions of `policy(observations, key, t) -> actions` on `task` (t: the step
    index within each stream).

    `num_envs` environments run in lock-step; environment i contributes one contiguous
    stream of about size/num_envs transitions, so the data does not favour short episodes.
    `workers` processes (at most `num_envs`; `policy` must then be picklable) share the
    environments and draw exactly the same data as one: each still calls the policy on all
    `num_envs` rows (its own, the others zeros), and a row's actions depend only on that row
    and the step's key.
    """
    num_envs = max(1, min(num_envs, size))
    quotas = np.full(num_envs, size // num_envs) + (np.arange(num_envs) < size % num_envs)
    parts = np.array_split(np.arange(num_envs), max(1, min(workers, num_envs)))
    bar, bar_task = collection_progress(f"collecting {source}", size)
    done = [0]  # transitions so far, and at the last line printed

    def advance(count: int) -> None:
        before, done[0] = done[0], done[0] + count
        bar.update(bar_task, completed=done[0])
        if not console.is_terminal and done[0] * 10 // size > before * 10 // size:
            console.print(f"collecting {source}: {done[0]:,}/{size:,} transitions")  # log files

    with bar:
        if len(parts) == 1:
            streams = _collect_streams(task, policy, seed, quotas, parts[0], advance)
        else:
            streams = _collect_in_workers(task, policy, seed, quotas, parts, advance)
    arrays = {
        name: np.concatenate([np.asarray(s[name]) for s in streams]).astype(
            np.float32 if name not in ("terminals", "timeouts") else bool
        )
        for name in FIELDS
    }
    return Dataset.from_arrays(arrays, source, -1.0, 1.0)


def _collect_streams(
    task: Task,
    policy: Callable[[np.ndarray, jax.Array, int], np.ndarray],
    seed: int,
    quotas: np.ndarray,
    indices: np.ndarray,
    advance: Callable[[int], None],
) -> list[dict[str, list]]:
    """The streams of environments `indices` (of len(quotas) in lock-step), as `rollout`
    draws them; `advance(n)` after each step that added n transitions."""
    num_envs = len(quotas)
    reset_seeds = np.random.SeedSequence(seed).generate_state(num_envs)
    envs = {i: task.make_env() for i in indices}
    obs = None
    streams = {i: {name: [] for name in FIELDS} for i in indices}
    with jax.default_device(jax.local_devices(backend="cpu")[0]):
        key = jax.random.key(seed)
        for i in indices:
            first = envs[i].reset(seed=int(reset_seeds[i]))[0]
            if obs is None:
                obs = np.zeros((num_envs, *np.shape(first)), np.float32)
            obs[i] = first
        for t in range(int(quotas.max())):
            actions = np.clip(policy(obs, jax.random.fold_in(key, t), t), -1.0, 1.0)
            active = [i for i in indices if quotas[i] > t]
            for i in active:
                next_obs, reward, terminated, truncated, _ = envs[i].step(actions[i])
                next_obs = next_obs.astype(np.float32)
                stream = streams[i]
                stream["observations"].append(obs[i].copy())
                stream["actions"].append(actions[i])
                stream["rewards"].append(reward)
                stream["next_observations"].append(next_obs)
                stream["terminals"].append(terminated)
                stream["timeouts"].append(truncated and not terminated)
                obs[i] = envs[i].reset()[0] if terminated or truncated else next_obs
            advance(len(active))
    for env in envs.values():
        env.close()
    return [streams[i] for i in indices]


_counter = None  # a worker's shared count of transitions drawn (`_collect_in_workers`)


def _init_worker(counter) -> None:
    global _counter
    _counter = counter
    jax.config.update("jax_platforms", "cpu")  # the policy acts on the CPU: no GPU to start


def _count(n: int) -> None:
    with _counter.get_lock():
        _counter.value += n


def _worker_streams(*args) -> list[dict[str, np.ndarray]]:
    streams = _collect_streams(*args, _count)
    return [{name: np.asarray(values) for name, values in s.items()} for s in streams]


def _collect_in_workers(
    task: Task,
    policy: Callable[[np.ndarray, jax.Array, int], np.ndarray],
    seed: int,
    quotas: np.ndarray,
    parts: list[np.ndarray],
    advance: Callable[[int], None],
) -> list[dict[str, np.ndarray]]:
    """`_collect_streams` of each part of the environments in a process of its own (spawned:
    JAX's threads do not survive a fork), in environment order."""
    context = multiprocessing.get_context("spawn")
    counter = context.Value("q", 0)
    pool = ProcessPoolExecutor(len(parts), context, _init_worker, (counter,))
    with pool:
        futures = [pool.submit(_worker_streams, task, policy, seed, quotas, part) for part in parts]
        shown = 0
        while not all(f.done() for f in futures):
            wait(futures, timeout=0.5)
            advance(counter.value - shown)
            shown = counter.value
        advance(counter.value - shown)
        return [s for f in futures for s in f.result()]


def concatenate(datasets: list[Dataset], source: str) -> Dataset:
    """Datasets one after another; each part's episode boundaries are kept."""
    arrays = {name: np.concatenate([d.arrays()[name] for d in datasets]) for name in FIELDS}
    return Dataset.from_arrays(arrays, source)


def dataset_from_replay(transitions: dict[str, np.ndarray], source: str) -> Dataset:
    """A Dataset from an online replay buffer in insertion order. The buffer keeps only masks;
    an episode that ends without a terminal was cut by the time limit, which shows as the next
    row not continuing it, so those rows become timeouts."""
    terminals = transitions["masks"] == 0
    arrays = {k: transitions[k] for k in FIELDS if k in transitions}
    arrays |= {"terminals": terminals, "timeouts": np.zeros_like(terminals)}
    broken = Dataset.from_arrays(arrays, source).broken
    arrays["timeouts"] = broken & ~terminals
    return Dataset.from_arrays(arrays, source)


def collect_medium_replay(task: Task, seed: int) -> Dataset:
    """Re-collect the medium run's replay buffer from its snapshot chain (see module doc)."""
    policies, steps = load_policy_chain(replay_path(task.name))
    meta = policies[0].meta
    size, warmup, action_dim = meta["buffer_size"], meta["start_steps"], meta["action_dim"]
    midpoints = [(a + b) / 2 for a, b in itertools.pairwise(steps)]

    def policy(obs: np.ndarray, key: jax.Array, t: int) -> np.ndarray:
        if t < warmup:  # SAC's uniform random warm-up
            return np.asarray(jax.random.uniform(key, (len(obs), action_dim), minval=-1.0))
        return policies[bisect.bisect_right(midpoints, t)].act(obs, key)

    source = f"generated {task.name}-medium-replay (seed {seed})"
    return rollout(task, policy, size, seed, source, num_envs=1)


def replay_path(task: str) -> Path:
    """The medium training run's snapshot chain, from which `medium-replay` is made."""
    return zoo_dir() / f"{task}-medium-replay.npz"


def _fingerprint(task: Task, level: str) -> str:
    """Hash of what a level is made from, so a retrained zoo invalidates the cache."""
    digest = hashlib.sha256(f"v{DATASET_VERSION}".encode())
    parts = {"medium-expert": ("medium", "expert")}.get(level, (level,))
    for part in parts:
        path = replay_path(task.name) if part == "medium-replay" else None
        if path is None and part in ZOO_LEVELS:
            path = zoo_policy(task.name, part)
        if path is not None and path.exists():
            digest.update(path.read_bytes())
    return digest.hexdigest()[:8]


def dataset_path(task: Task, level: str, size: int, seed: int) -> Path:
    return data_dir() / f"{task.name}-{level}-{size}-seed{seed}-{_fingerprint(task, level)}.npz"


def make_dataset(
    name: str, size: int | None = None, seed: int = 0, workers: int | None = None
) -> tuple[Dataset, Path]:
    """The dataset `TASK-LEVEL`: from the cache, or generated (and cached) on first use, in
    `workers` processes (the same data for any number; default: the task's, see its collect)."""
    task, level = parse_task(name)
    if level is None:
        raise ValueError(
            f"'{name}' names a task, not a dataset; add a level: "
            + ", ".join(f"{task.name}-{lv}" for lv in task.levels)
        )
    if level == "medium-replay":
        size = _medium_replay_size(task, size)
    size = size or task.dataset_size
    if size < 1:
        raise ValueError(f"--size must be positive, got {size}")
    path = dataset_path(task, level, size, seed)
    if path.exists():
        return load_native(path)[0], path
    if level == "medium-expert":
        parts = [
            make_dataset(f"{task.name}-{lv}", size, seed, workers)[0] for lv in ("medium", "expert")
        ]
        dataset = concatenate(parts, f"generated {task.name}-medium-expert (seed {seed})")
    else:
        dataset = task.collect(level, size, seed, workers)
    meta = {
        "task": task.name,
        "level": level,
        "size": size,
        "seed": seed,
        "version": DATASET_VERSION,
        "jax": jax.__version__,
        "mujoco": version("mujoco"),
    }
    save_native(dataset, path, meta)
    console.print(f"dataset {task.name}-{level}: {len(dataset)} transitions cached in {path}")
    return dataset, path


def _medium_replay_size(task: Task, size: int | None) -> int:
    path = replay_path(task.name)
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: no medium-replay policy chain for '{task.name}'; scripts/train_zoo.py "
            "writes it when it selects the medium policy"
        )
    buffer_size = load_policy_chain(path)[0][0].meta["buffer_size"]
    if size is not None and size != buffer_size:
        console.print(
            f"[yellow]{task.name}-medium-replay is the medium run's whole buffer "
            f"({buffer_size} transitions); --size {size} is ignored"
        )
    return buffer_size
