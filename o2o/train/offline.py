"""The offline phase: gradient updates on a fixed dataset, in scanned chunks, with evaluation.

Each jitted call runs a chunk of updates under `jax.lax.scan`, sampling every minibatch on the
device from the dataset's device-resident buffer, so the host is visited only between chunks
(for the progress bar, evaluation and checkpoints). A resumed run continues from its last
evaluation with the same agent, RNG key and counters.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp

from o2o.checkpoint import (
    checkpoint_to_resume,
    find_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from o2o.data.buffer import ReplayBuffer
from o2o.data.dataset import Dataset
from o2o.envs.tasks import Task
from o2o.logging import RunLogger, console, device_kind, progress_bar, read_metrics
from o2o.train.evaluate import Evaluator, check_finite, q_limit
from o2o.train.stop import Interrupted, StopRequest

# Updates per jitted call (at most; evaluations cut chunks shorter). Ctrl-C waits for the
# current chunk: 250 keeps that wait short even for CQL (about 14 updates/s at 256x256).
CHUNK = 250


@functools.partial(jax.jit, static_argnames=("num_updates", "utd", "batch_size", "horizon"))
def _update_chunk(agent, key, dataset: ReplayBuffer, *, num_updates, utd, batch_size, horizon=1):
    """`num_updates` agent updates, each on `utd` fresh minibatches drawn from `dataset`
    (windows of `horizon` steps for a chunked agent)."""

    def body(carry, _):
        agent, key = carry
        key, key_batch = jax.random.split(key)
        batch = dataset.sample(key_batch, utd * batch_size, horizon)
        batch = jax.tree.map(lambda x: x.reshape(utd, batch_size, *x.shape[1:]), batch)
        agent, metrics = agent.update(batch)
        return (agent, key), metrics

    (agent, key), metrics = jax.lax.scan(body, (agent, key), None, length=num_updates)
    return agent, key, jax.tree.map(jnp.mean, metrics)


def _shared(path: tuple) -> bool:
    """Whether a leaf is an update counter (`TrainState.step`): equal for seeds updated
    together, so a `stack` holds it once."""
    return bool(path) and getattr(path[-1], "name", None) == "step"


def seed_axes(tree: Any) -> Any:
    """The vmap axes of a `stack`ed pytree: None for its update counters, 0 elsewhere. An
    unbatched counter keeps control flow on it a branch under vmap (TD3's delayed actor update
    runs when due instead of on both sides of a select every update)."""
    return jax.tree_util.tree_map_with_path(lambda path, _: None if _shared(path) else 0, tree)


def stack(trees: list[Any]) -> Any:
    """One pytree whose leaves hold `trees` on a new leading axis (agents of several seeds,
    to update them in one vmapped call), the update counters once (`seed_axes`). The trees are
    built from one config; the first one's static fields (config, optimisers: equal, though
    distinct closures) serve all of them."""
    treedef = jax.tree.structure(trees[0])
    paths = [path for path, _ in jax.tree_util.tree_leaves_with_path(trees[0])]
    members = [jax.tree.leaves(tree) for tree in trees]
    leaves = []
    for path, values in zip(paths, zip(*members, strict=True), strict=True):
        if _shared(path):
            if len({int(v) for v in values}) > 1:
                raise ValueError(
                    f"seeds updated together must be at the same step; "
                    f"{jax.tree_util.keystr(path)} is {[int(v) for v in values]}"
                )
            leaves.append(values[0])
        else:
            leaves.append(jnp.stack(values))
    return treedef.unflatten(leaves)


def unstack(tree: Any, index: int) -> Any:
    """Member `index` of a `stack`ed pytree."""
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: leaf if _shared(path) else leaf[index], tree
    )


@functools.partial(jax.jit, static_argnames=("num_updates", "utd", "batch_size", "horizon"))
def _update_chunk_seeds(agents, keys, dataset: ReplayBuffer, **static):
    """`_update_chunk` for a stack of agents (one per seed) and their RNG keys, in one call:
    each seed draws its own minibatches from the shared dataset."""
    chunk = functools.partial(_update_chunk, **static)
    axes = seed_axes(agents)
    return jax.vmap(chunk, in_axes=(axes, 0, None), out_axes=(axes, 0, 0))(agents, keys, dataset)


@dataclass
class OfflineProgress:
    """Counters saved with every offline checkpoint."""

    updates: int = 0
    wall_s: float = 0.0
    evaluations: list[dict[str, Any]] = field(default_factory=list)


def checkpoint_dir(run_dir: Path) -> Path:
    """Where a run keeps its offline checkpoint (the agent, its RNG key and progress)."""
    return run_dir / "checkpoints" / "offline"


def saved_updates(run_dir: Path) -> int:
    """Offline updates in a run's checkpoint (0 without one)."""
    found = find_checkpoint(checkpoint_dir(run_dir))
    return json.loads((found / "progress.json").read_text())["updates"] if found else 0


def offline_record(run_dir: Path) -> OfflineProgress:
    """A finished offline phase's progress: from its checkpoint, or, that gone, from its
    evaluation records in metrics.jsonl."""
    found = find_checkpoint(checkpoint_dir(run_dir))
    if found is not None:
        return OfflineProgress(**json.loads((found / "progress.json").read_text()))
    records = [r for r in read_metrics(run_dir) if r["phase"] == "offline"]
    if not records:
        raise FileNotFoundError(
            f"{run_dir}: its online phase has begun, but neither its offline checkpoint nor "
            "offline records in metrics.jsonl are left; start the run over in a new --out"
        )
    return OfflineProgress(
        updates=records[-1]["step"],
        wall_s=records[-1].get("wall_s", 0.0),
        evaluations=[
            {k: r[k] for k in ("step", "normalized_score", "return_mean")} for r in records
        ],
    )


@dataclass
class OfflineLoop:
    """`offline_steps` updates on `dataset` of one agent per seed; `run()` returns the trained
    agents. Several seeds train in one vmapped update (their agents stacked, each with its own
    minibatches) and each keeps its own run directory, evaluations and checkpoints, exactly
    as a run of that seed alone would (to float tolerance: vmapped products round apart)."""

    task: Task
    agents: list[Any]  # one per seed, created with that seed
    dataset: ReplayBuffer
    run_dirs: list[Path]
    offline_steps: int
    seeds: list[int]
    eval_interval: int
    eval_episodes: int
    holdout: Dataset | None = None  # dataset episodes kept out of training (holdout_q_bias)
    horizon: int = 1  # actions per chunk (`Needs.horizon`): batches are windows of steps
    eval_device: Literal["default", "cpu"] = "default"  # where the agent acts (Evaluator)

    def run(self) -> tuple[list[Any], list[OfflineProgress]]:
        agents = self.agents
        keys = [jax.random.key(seed + 2) for seed in self.seeds]
        self.progress = [OfflineProgress() for _ in self.seeds]
        for k, run_dir in enumerate(self.run_dirs):
            found = checkpoint_to_resume(checkpoint_dir(run_dir))
            if found is not None:
                (agents[k], keys[k]), saved = load_checkpoint(found, (agents[k], keys[k]))
                self.progress[k] = OfflineProgress(**saved)
        done = {progress.updates for progress in self.progress}
        if len(done) > 1:
            raise ValueError(
                f"{', '.join(map(str, self.run_dirs))}: their checkpoints are at different "
                f"steps ({sorted(done)}); resume them one seed at a time"
            )
        updates = done.pop()
        if updates >= self.offline_steps:
            return agents, self.progress  # done: leave their records alone
        resumed = updates > 0  # a checkpoint at 0 updates: starting over loses nothing
        keep = ("offline", updates) if resumed else None
        self.loggers = [RunLogger(d, keep) for d in self.run_dirs]
        cfg = agents[0].config
        self.evaluators = [
            Evaluator(
                self.task,
                self.eval_episodes,
                seed=10_000 + seed,
                gamma=cfg.discount,
                holdout=self.holdout,
                horizon=self.horizon,
                device=self.eval_device,
            )
            for seed in self.seeds
        ]
        self.q_bound = q_limit([self.dataset], cfg.discount)
        vmapped = len(self.seeds) > 1
        self.agent, self.key = (stack(agents), stack(keys)) if vmapped else (agents[0], keys[0])
        update = _update_chunk_seeds if vmapped else _update_chunk
        self.metrics: dict[str, Any] = {}
        self.t_interval, self.updates_interval = time.perf_counter(), 0
        label = f"offline ({len(self.seeds)} seeds)" if vmapped else "offline"
        with progress_bar() as bar, StopRequest() as stop:
            bar_task = bar.add_task(label, total=self.offline_steps, completed=updates, info="")
            if not resumed:
                self._evaluate_and_save()
            while updates < self.offline_steps:
                next_eval = min(
                    (updates // self.eval_interval + 1) * self.eval_interval, self.offline_steps
                )
                n = min(CHUNK, next_eval - updates)
                self.agent, self.key, self.metrics = update(
                    self.agent,
                    self.key,
                    self.dataset,
                    num_updates=n,
                    utd=cfg.utd_ratio,
                    batch_size=cfg.batch_size,
                    horizon=self.horizon,
                )
                updates += n
                for progress in self.progress:
                    progress.updates = updates
                self.updates_interval += n
                bar.advance(bar_task, n)
                if updates == next_eval:
                    returns = [r["return_mean"] for r in self._evaluate_and_save()]
                    bar.update(bar_task, info=f"return {' '.join(f'{r:.0f}' for r in returns)}")
                if stop.requested:
                    self._save_between_evaluations()
                    raise Interrupted(
                        f"stopped by Ctrl-C at offline update {updates}, checkpoint saved in "
                        f"{', '.join(map(str, self.run_dirs))}: the same command resumes there"
                    )
        for logger in self.loggers:
            logger.close()
        if not vmapped:
            return [self.agent], self.progress
        return [unstack(self.agent, k) for k in range(len(self.seeds))], self.progress

    def _member(self, tree: Any, k: int) -> Any:
        return unstack(tree, k) if len(self.seeds) > 1 else tree

    def _evaluate_and_save(self) -> list[dict[str, Any]]:
        """Evaluate, log and checkpoint every seed; their records."""
        jax.block_until_ready(self.agent)
        elapsed = time.perf_counter() - self.t_interval
        for k, run_dir in enumerate(self.run_dirs):
            metrics = {name: self._member(value, k) for name, value in self.metrics.items()}
            check_finite(metrics, self.progress[k].updates, run_dir, "offline", self.q_bound)
        records = []
        for k, progress in enumerate(self.progress):
            agent, key = self._member(self.agent, k), self._member(self.key, k)
            progress.wall_s += elapsed  # the wall-clock time of the seeds updated together
            record = {"step": progress.updates, "phase": "offline", "env_steps": 0}
            record |= self.evaluators[k](agent)
            rate = self.updates_interval / elapsed if self.updates_interval else 0.0
            record["updates_per_s"] = rate  # each seed's; the group's total is len(seeds) x
            record["device"] = device_kind()
            record["wall_s"] = progress.wall_s
            if len(self.seeds) > 1:
                record["vmapped_seeds"] = len(self.seeds)
            record |= {
                f"train/{name}": float(self._member(value, k))
                for name, value in self.metrics.items()
            }
            self.loggers[k].log(record)
            seed = f"seed {self.seeds[k]}  " if len(self.seeds) > 1 else ""
            console.print(
                f"offline {progress.updates:>8}  {seed}return {record['return_mean']:9.1f}  "
                f"score {record['normalized_score']:6.1f}  q_bias {record['q_bias']:8.2f}  "
                f"{record['updates_per_s']:6.0f} updates/s"
            )
            progress.evaluations.append(
                {name: record[name] for name in ("step", "normalized_score", "return_mean")}
            )
            save_checkpoint(checkpoint_dir(self.run_dirs[k]), (agent, key), progress.__dict__)
            records.append(record)
        self.t_interval, self.updates_interval = time.perf_counter(), 0
        return records

    def _save_between_evaluations(self) -> None:
        """Checkpoint every seed where it is (Ctrl-C); its records stay those logged."""
        jax.block_until_ready(self.agent)
        elapsed = time.perf_counter() - self.t_interval
        for k, progress in enumerate(self.progress):
            progress.wall_s += elapsed
            state = (self._member(self.agent, k), self._member(self.key, k))
            save_checkpoint(checkpoint_dir(self.run_dirs[k]), state, progress.__dict__)
