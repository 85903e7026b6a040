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
from typing import Any

import jax
import jax.numpy as jnp

from o2o.checkpoint import load_checkpoint, save_checkpoint
from o2o.data.buffer import ReplayBuffer
from o2o.data.dataset import Dataset
from o2o.envs.tasks import Task
from o2o.logging import RunLogger, console, progress_bar
from o2o.train.evaluate import Evaluator

CHUNK = 1000  # updates per jitted call (at most; evaluations cut chunks shorter)


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


@dataclass
class OfflineProgress:
    """Counters saved with every offline checkpoint."""

    updates: int = 0
    wall_s: float = 0.0
    evaluations: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class OfflineLoop:
    """`offline_steps` updates of `agent` on `dataset`; `run()` returns the trained agent."""

    task: Task
    agent: Any
    dataset: ReplayBuffer
    run_dir: Path
    offline_steps: int
    seed: int
    eval_interval: int
    eval_episodes: int
    holdout: Dataset | None = None  # dataset episodes kept out of training (holdout_q_bias)
    horizon: int = 1  # actions per chunk (`Needs.horizon`): batches are windows of steps

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints" / "offline"

    def run(self) -> tuple[Any, OfflineProgress]:
        self.key = jax.random.key(self.seed + 2)
        self.progress = OfflineProgress()
        if self.checkpoint_dir.exists():
            saved = json.loads((self.checkpoint_dir / "progress.json").read_text())
            (self.agent, self.key), saved = load_checkpoint(
                self.checkpoint_dir, (self.agent, self.key)
            )
            self.progress = OfflineProgress(**saved)
        if self.progress.updates >= self.offline_steps:
            return self.agent, self.progress  # done: leave its records alone
        resumed = self.progress.updates > 0
        self.logger = RunLogger(self.run_dir, self.progress.updates if resumed else None)
        cfg = self.agent.config
        self.evaluator = Evaluator(
            self.task,
            self.eval_episodes,
            seed=10_000 + self.seed,
            gamma=cfg.discount,
            holdout=self.holdout,
            horizon=self.horizon,
        )
        self.metrics: dict[str, Any] = {}
        self.t_interval, self.updates_interval = time.perf_counter(), 0
        with progress_bar() as bar:
            bar_task = bar.add_task(
                "offline", total=self.offline_steps, completed=self.progress.updates, info=""
            )
            if not resumed:
                self._evaluate_and_save()
            while self.progress.updates < self.offline_steps:
                done = self.progress.updates
                next_eval = min(
                    (done // self.eval_interval + 1) * self.eval_interval, self.offline_steps
                )
                n = min(CHUNK, next_eval - done)
                self.agent, self.key, metrics = _update_chunk(
                    self.agent,
                    self.key,
                    self.dataset,
                    num_updates=n,
                    utd=cfg.utd_ratio,
                    batch_size=cfg.batch_size,
                    horizon=self.horizon,
                )
                self.metrics = metrics
                self.progress.updates += n
                self.updates_interval += n
                bar.advance(bar_task, n)
                if self.progress.updates == next_eval:
                    record = self._evaluate_and_save()
                    bar.update(bar_task, info=f"return {record['return_mean']:.0f}")
        self.logger.close()
        return self.agent, self.progress

    def _evaluate_and_save(self) -> dict[str, Any]:
        progress = self.progress
        jax.block_until_ready(self.agent)
        elapsed = time.perf_counter() - self.t_interval
        progress.wall_s += elapsed
        record = {"step": progress.updates, "phase": "offline", "env_steps": 0}
        record |= self.evaluator(self.agent)
        record["updates_per_s"] = self.updates_interval / elapsed if self.updates_interval else 0.0
        record["wall_s"] = progress.wall_s
        record |= {f"train/{k}": float(v) for k, v in self.metrics.items()}
        self.logger.log(record)
        console.print(
            f"offline {progress.updates:>8}  return {record['return_mean']:9.1f}  "
            f"score {record['normalized_score']:6.1f}  q_bias {record['q_bias']:8.2f}  "
            f"{record['updates_per_s']:6.0f} updates/s"
        )
        progress.evaluations.append(
            {k: record[k] for k in ("step", "normalized_score", "return_mean")}
        )
        save_checkpoint(self.checkpoint_dir, (self.agent, self.key), progress.__dict__)
        self.t_interval, self.updates_interval = time.perf_counter(), 0
        return record
