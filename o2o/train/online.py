"""The online phase: act, store, update at the configured update-to-data ratio, evaluate.

One environment step costs one jitted call: the transition is written into the device ring
buffer, `utd_ratio` minibatches are drawn on the device (mixed with offline data at the
sampler's ratio), the agent is updated under `lax.scan`, and the next action is sampled.
Checkpoints hold the agent, the buffer, every RNG and the counters, so a resumed run
continues where it stopped and never repeats the random warm-up.
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
import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from o2o.checkpoint import load_checkpoint, save_checkpoint
from o2o.data.buffer import MixedSampler, ReplayBuffer
from o2o.envs.tasks import Task
from o2o.logging import RunLogger
from o2o.train.evaluate import Evaluator


@functools.partial(jax.jit, static_argnames=("update", "utd", "batch_size"), donate_argnums=(0, 1))
def _env_step(
    agent, buffer, key, transition, policy_obs, env_step, sampler, *, update, utd, batch_size
):
    """Store one transition, optionally run one block of updates, sample the next action."""
    buffer = buffer.add(transition)
    key, key_batch, key_act = jax.random.split(key, 3)
    metrics = {}
    if update:
        batch = sampler.sample(key_batch, buffer, utd * batch_size, env_step)
        batch = jax.tree.map(lambda x: x.reshape(utd, batch_size, *x.shape[1:]), batch)
        agent, metrics = agent.update(batch)
    action = agent.sample_actions(policy_obs[None], key_act)[0]
    return agent, buffer, key, action, metrics


@jax.jit
def _act(agent, obs, key):
    return agent.sample_actions(obs[None], key)[0]


@dataclass
class RunProgress:
    """Counters saved with every checkpoint."""

    env_steps: int = 0
    updates: int = 0
    episodes: int = 0
    wall_s: float = 0.0
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    np_rng_state: dict | None = None
    buffer_capacity: int = 0


@dataclass
class OnlineLoop:
    task: Task
    agent: Any
    sampler: MixedSampler
    run_dir: Path
    online_steps: int
    seed: int
    eval_interval: int
    eval_episodes: int
    buffer_capacity: int = 1_000_000

    def run(self) -> RunProgress:
        cfg = self.agent.config
        env = self.task.make_env()
        act_dim = env.action_space.shape[0]
        obs_dim = env.observation_space.shape[0]
        example = {
            "observations": np.zeros(obs_dim, np.float32),
            "actions": np.zeros(act_dim, np.float32),
            "rewards": np.float32(0),
            "next_observations": np.zeros(obs_dim, np.float32),
            "masks": np.float32(0),
        }
        capacity = max(1, min(self.online_steps, self.buffer_capacity))
        agent = self.agent
        key = jax.random.key(self.seed + 1)
        progress = RunProgress(buffer_capacity=capacity)
        ckpt_dir = self.run_dir / "checkpoints" / "latest"
        if ckpt_dir.exists():
            saved = json.loads((ckpt_dir / "progress.json").read_text())
            template = (agent, ReplayBuffer.create(example, saved["buffer_capacity"]), key)
            (agent, buffer, key), saved = load_checkpoint(ckpt_dir, template)
            progress = RunProgress(**saved)
            if capacity > buffer.capacity:  # the run was extended: keep every transition
                buffer = buffer.grown(capacity)
                progress.buffer_capacity = capacity
        else:
            buffer = ReplayBuffer.create(example, capacity)
        np_rng = np.random.default_rng(self.seed)
        if progress.np_rng_state is not None:
            np_rng.bit_generator.state = progress.np_rng_state
        resumed = progress.env_steps > 0
        logger = RunLogger(self.run_dir, progress.env_steps if resumed else None)
        evaluator = Evaluator(
            self.task, self.eval_episodes, seed=10_000 + self.seed, gamma=cfg.discount
        )

        # A resumed run starts a fresh episode: simulator state is not checkpointed.
        obs, _ = env.reset(seed=self.seed + 7919 * progress.env_steps)
        obs = obs.astype(np.float32)
        key, key_act = jax.random.split(key)
        next_action = np.asarray(_act(agent, jnp.asarray(obs), key_act))
        episode_return, episode_len = 0.0, 0
        metrics: dict = {}
        t_interval, updates_interval = time.perf_counter(), 0

        def evaluate_and_save():
            nonlocal t_interval, updates_interval
            elapsed = time.perf_counter() - t_interval
            record = {
                "step": progress.env_steps,
                "phase": "online",
                "env_steps": progress.env_steps,
            }
            record |= evaluator(agent)
            record["updates_per_s"] = updates_interval / elapsed if updates_interval else 0.0
            progress.wall_s += elapsed
            record["wall_s"] = progress.wall_s
            record |= {f"train/{k}": float(v) for k, v in metrics.items()}
            logger.log(record)
            progress.evaluations.append(
                {k: record[k] for k in ("env_steps", "normalized_score", "return_mean")}
            )
            progress.np_rng_state = np_rng.bit_generator.state
            save_checkpoint(ckpt_dir, (agent, buffer, key), progress.__dict__)
            t_interval, updates_interval = time.perf_counter(), 0
            return record

        with _progress_bar() as bar:
            task_id = bar.add_task(
                "online", total=self.online_steps, completed=progress.env_steps, info=""
            )
            if not resumed:
                record = evaluate_and_save()
                bar.update(task_id, info=f"return {record['return_mean']:.0f}")
            while progress.env_steps < self.online_steps:
                if progress.env_steps < cfg.start_steps:
                    action = np_rng.uniform(-1.0, 1.0, act_dim).astype(np.float32)
                else:
                    action = next_action
                next_obs, reward, terminated, truncated, _ = env.step(action)
                next_obs = next_obs.astype(np.float32)
                transition = {
                    "observations": obs,
                    "actions": action,
                    "rewards": np.float32(reward),
                    "next_observations": next_obs,
                    "masks": np.float32(1.0 - terminated),
                }
                episode_return += float(reward)
                episode_len += 1
                if terminated or truncated:
                    progress.episodes += 1
                    logger.tb.add_scalar("online/train_return", episode_return, progress.env_steps)
                    obs = env.reset()[0].astype(np.float32)
                    episode_return, episode_len = 0.0, 0
                else:
                    obs = next_obs
                update = progress.env_steps >= cfg.start_steps
                agent, buffer, key, next_action, step_metrics = _env_step(
                    agent,
                    buffer,
                    key,
                    transition,
                    obs,
                    progress.env_steps,
                    self.sampler,
                    update=update,
                    utd=cfg.utd_ratio,
                    batch_size=cfg.batch_size,
                )
                next_action = np.asarray(next_action)
                if update:
                    metrics = step_metrics
                    progress.updates += cfg.utd_ratio
                    updates_interval += cfg.utd_ratio
                progress.env_steps += 1
                bar.advance(task_id)
                if (
                    progress.env_steps % self.eval_interval == 0
                    or progress.env_steps == self.online_steps
                ):
                    record = evaluate_and_save()
                    bar.update(
                        task_id,
                        info=f"return {record['return_mean']:.0f} "
                        f"score {record['normalized_score']:.1f} "
                        f"{record['updates_per_s']:.0f} upd/s",
                    )
        logger.close()
        self.agent = agent
        return progress


def _progress_bar() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    )
