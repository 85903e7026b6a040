"""The online phase: act, store, update at the configured update-to-data ratio, evaluate.

One environment step costs two jitted calls: the transition is written into the device ring
buffer in place; then `utd_ratio` minibatches are drawn on the device (mixed with offline data
at the sampler's ratio), the agent is updated under `lax.scan`, and the next action sampled.
Checkpoints hold the agent, the buffer, every RNG and the counters, so a resumed run
continues where it stopped and never repeats the random warm-up. Several seeds of one
configuration step together (`SeedsOnlineLoop`): the same two calls, vmapped over the seeds'
agents, buffers and keys.

What the loop provides follows the agent's declaration for the online phase (`needs`,
`o2o.agents.base.Needs`):
- chunked agents (QC: `horizon` > 1) act through an action queue: a chunk drawn from the agent
  is executed open-loop, one action per environment step, and a new one is drawn when it is
  used up or the episode ends. Every step is still stored as one transition, with an `ends`
  flag, and updates sample windows of `horizon` steps from it;
- without `random_warmup` the agent acts with its policy during the `start_steps` warm-up
  (which then only delays updates) instead of uniformly at random;
- `mc_returns` (Cal-QL): each online episode is stored when it ends, with the discounted
  return from each of its steps, and updates start once the first one is stored. The episode
  in progress at a checkpoint is not saved: a resumed run starts a fresh episode, as always;
- `next_actions` (ReBRAC with an online critic penalty): each transition carries the agent's
  own action at s', drawn when it is stored (CORL's online buffer).

Every finished training episode is logged to episodes.jsonl (its return, normalised score and,
on tasks with a success metric, whether it succeeded): the run's regret is computed from them
(`o2o.diagnostics.finetune`).
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
import numpy as np

from o2o.agents.base import Needs
from o2o.checkpoint import (
    checkpoint_to_resume,
    find_checkpoint,
    load_checkpoint,
    save_checkpoint,
    stored_shapes,
)
from o2o.data.buffer import MixedSampler, ReplayBuffer
from o2o.data.dataset import Dataset, discounted_returns
from o2o.envs.tasks import Task
from o2o.logging import RunLogger, console, device_kind, progress_bar
from o2o.train.evaluate import Evaluator, check_finite, q_limit
from o2o.train.offline import seed_axes, stack, unstack
from o2o.train.stop import Interrupted, StopRequest
from o2o.zoo import save_policy


@functools.partial(jax.jit, donate_argnums=0)
def _store(buffer, transition):
    return buffer.add(transition)


def _update_then_act(
    agent, buffer, key, policy_obs, env_step, sampler, *, utd, batch_size, horizon=1, act=True
):
    """One block of `utd` updates on minibatches (windows of `horizon` steps) drawn on the
    device, then, if `act`, the next action (chunk).

    Storing is a separate call: when one computation both writes the ring buffer and reads
    minibatches from it, XLA copies the whole buffer every step instead of updating it in
    place (measured on Ant: 84 ms against 9 ms a step with a 200k-row buffer).
    """
    key, key_batch, key_act = jax.random.split(key, 3)
    batch = sampler.sample_minibatches(key_batch, buffer, utd, batch_size, env_step, horizon)
    agent, metrics = agent.update(batch)
    action = agent.sample_actions(policy_obs[None], key_act)[0] if act else None
    return agent, key, action, metrics


_update_and_act = jax.jit(
    _update_then_act, static_argnames=("utd", "batch_size", "horizon", "act"), donate_argnums=0
)


@jax.jit
def _act(agent, obs, key):
    return agent.sample_actions(obs[None], key)[0]


@functools.partial(jax.jit, donate_argnums=0)
def _store_seeds(buffers, transitions):
    """`_store` for a stack of buffers (one per seed), each its own transition."""
    return jax.vmap(ReplayBuffer.add)(buffers, transitions)


@functools.partial(jax.jit, static_argnames=("utd", "batch_size", "horizon"), donate_argnums=0)
def _update_and_act_seeds(agents, buffers, keys, policy_obs, env_step, sampler, **static):
    """`_update_and_act` for a stack of agents, each with its own buffer, key and observation
    (the offline data shared); every seed's next action chunk is drawn."""
    body = functools.partial(_update_then_act, act=True, **static)
    axes = seed_axes(agents)
    return jax.vmap(body, in_axes=(axes, 0, 0, 0, None, None), out_axes=(axes, 0, 0, 0))(
        agents, buffers, keys, policy_obs, env_step, sampler
    )


@jax.jit
def _act_seeds(agents, obs, keys):
    """`_act` for a stack of agents, each its observation and key."""
    return jax.vmap(_act, in_axes=(seed_axes(agents), 0, 0))(agents, obs, keys)


def online_checkpoint_dir(run_dir: Path) -> Path:
    """Where a run keeps its online checkpoint (agent, replay buffer, RNG state, progress)."""
    return Path(run_dir) / "checkpoints" / "latest"


def saved_env_steps(run_dir: Path) -> int | None:
    """Online environment steps in a run's checkpoint (None without one)."""
    found = find_checkpoint(online_checkpoint_dir(run_dir))
    return json.loads((found / "progress.json").read_text())["env_steps"] if found else None


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


def episode_record(
    task: Task, step: int, env_steps: int, episode_return: float, success: bool
) -> dict[str, Any]:
    """A finished training episode: the run's step and the env steps at its end, its return
    (environment units), normalised score and, on tasks with a success metric, whether it
    reached the goal."""
    record = {
        "step": step,
        "env_steps": env_steps,
        "return": episode_return,
        "score": float(task.score(np.array([episode_return]), np.array([success]))),
    }
    return record | ({"success": success} if task.success_metric else {})


def example_transition(env, needs: Needs) -> dict[str, np.ndarray]:
    """A zero transition: the online buffer's fields and shapes, with the batch fields the
    agent needs (and `ends` for windows of steps)."""
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    extra = {"mc_returns": np.float32(0)} if "mc_returns" in needs.batch_fields else {}
    if "next_actions" in needs.batch_fields:
        extra["next_actions"] = np.zeros(act_dim, np.float32)
    extra |= {"ends": np.float32(0)} if needs.horizon > 1 else {}
    return extra | {
        "observations": np.zeros(obs_dim, np.float32),
        "actions": np.zeros(act_dim, np.float32),
        "rewards": np.float32(0),
        "next_observations": np.zeros(obs_dim, np.float32),
        "masks": np.float32(0),
    }


@dataclass
class OnlineLoop:
    """Online training of `agent` on `task`; `run()` resumes from the run's checkpoint."""

    task: Task
    agent: Any
    sampler: MixedSampler
    run_dir: Path
    online_steps: int
    seed: int
    eval_interval: int
    eval_episodes: int
    buffer_capacity: int = 1_000_000
    policy_dir: Path | None = None  # where to keep the actor at every evaluation
    step_offset: int = 0  # offline updates before this phase: records' `step` continues them
    holdout: Dataset | None = None  # dataset episodes kept out of training (holdout_q_bias)
    needs: Needs = field(default_factory=Needs)  # the agent's, for the online phase
    eval_device: Literal["default", "cpu"] = "default"  # where the agent acts (Evaluator)

    @property
    def checkpoint_dir(self) -> Path:
        return online_checkpoint_dir(self.run_dir)

    def run(self) -> RunProgress:
        resumed = self._set_up()
        with progress_bar() as bar, StopRequest() as stop:
            task_id = bar.add_task(
                "online", total=self.online_steps, completed=self.progress.env_steps, info=""
            )
            if not resumed:
                self._evaluate_and_save()
            while self.progress.env_steps < self.online_steps:
                before = self.progress.env_steps
                self._step()
                steps = self.progress.env_steps
                bar.advance(task_id, steps - before)
                if self._evaluation_due(before):
                    record = self._evaluate_and_save()
                    bar.update(task_id, info=f"return {record['return_mean']:.0f}")
                if stop.requested:
                    self.progress.wall_s += time.perf_counter() - self.t_interval
                    save_checkpoint(self.checkpoint_dir, self._state(), self.progress.__dict__)
                    raise Interrupted(
                        f"stopped by Ctrl-C at online step {steps}, checkpoint saved in "
                        f"{self.run_dir}: the same command resumes there"
                    )
        self.logger.close()
        return self.progress

    def _evaluation_due(self, before: int) -> bool:
        """Whether the steps since `before` crossed an evaluation point or ended the phase."""
        steps = self.progress.env_steps
        interval = self.eval_interval
        return steps // interval > before // interval or steps >= self.online_steps

    def _set_up(self) -> bool:
        """The environment, the state (fresh or the checkpoint's), the logger, the evaluator
        and the first episode; whether the run resumed."""
        self.horizon = self.needs.horizon
        self.mc_returns = "mc_returns" in self.needs.batch_fields
        resumed = self._restore()
        if resumed:  # its records up to the checkpoint, the offline phase's included
            keep = ("online", self.step_offset + self.progress.env_steps)
        else:  # the offline phase's records, if it had one
            keep = ("online", self.step_offset - 1) if self.step_offset else None
        self.logger = RunLogger(self.run_dir, keep)
        self.evaluator = Evaluator(
            self.task,
            self.eval_episodes,
            seed=10_000 + self.seed,
            gamma=self.agent.config.discount,
            holdout=self.holdout,
            horizon=self.horizon,
            device=self.eval_device,
        )
        self._start()
        self.metrics = {}
        self.t_interval, self.updates_interval = time.perf_counter(), 0
        return resumed

    def _start(self) -> None:
        """The first episode and action chunk. A resumed run starts a fresh episode: simulator
        state is not checkpointed."""
        obs = self.env.reset(seed=self.seed + 7919 * self.progress.env_steps)[0]
        self.obs = obs.astype(np.float32)
        self.key, key_act = jax.random.split(self.key)
        self.queue = self._chunk(_act(self.agent, jnp.asarray(self.obs), key_act))
        self.episode_return, self.episode_success = 0.0, False
        self.episode: list[dict[str, Any]] = []  # with mc_returns: the episode not yet stored

    def _restore(self) -> bool:
        """The environment, and fresh state or the checkpoint's (growing the buffer if the run
        was extended); whether there was a checkpoint."""
        self.env = self.task.make_env()
        example = example_transition(self.env, self.needs)
        capacity = max(1, min(self.online_steps, self.buffer_capacity))
        self.key = jax.random.key(self.seed + 1)
        self.progress = RunProgress(buffer_capacity=capacity)
        self.buffer = ReplayBuffer.create(example, capacity)
        self.np_rng = np.random.default_rng(self.seed)
        found = checkpoint_to_resume(self.checkpoint_dir)
        if found is None:
            return False
        saved = json.loads((found / "progress.json").read_text())
        if "buffer_capacity" not in saved:  # checkpoints written before the field existed
            first_buffer_leaf = len(jax.tree.leaves(self.agent))
            saved["buffer_capacity"] = stored_shapes(found)[first_buffer_leaf][0]
        template = (self.agent, ReplayBuffer.create(example, saved["buffer_capacity"]), self.key)
        (self.agent, self.buffer, self.key), saved = load_checkpoint(found, template)
        self.progress = RunProgress(**saved)
        if capacity > self.buffer.capacity:  # the run was extended: keep every transition
            self.buffer = self.buffer.grown(capacity)
            self.progress.buffer_capacity = capacity
        self.np_rng.bit_generator.state = self.progress.np_rng_state
        return True

    def _chunk(self, actions: jax.Array) -> list[np.ndarray]:
        """A flattened chunk of `horizon` actions as the queue of its steps."""
        return list(np.asarray(actions).reshape(self.horizon, -1))

    def _step(self) -> None:
        """One environment step (the queue's next action, or a random one in a random warm-up),
        its storage, and (after the warm-up) one block of updates; a new chunk is drawn when
        the queue is empty."""
        cfg, progress = self.agent.config, self.progress
        transition, ended = self._env_step(self._next_action())
        if "next_actions" in self.needs.batch_fields:  # the agent's own action at s'
            self.key, key_next = jax.random.split(self.key)
            next_obs = jnp.asarray(transition["next_observations"])
            transition["next_actions"] = np.asarray(_act(self.agent, next_obs, key_next))
        if self.mc_returns:
            self.episode.append(transition)
        else:
            self.buffer = _store(self.buffer, transition)
        if ended:
            self._end_episode()
        # With Monte-Carlo returns, updates wait for the first stored online episode.
        ready = not self.mc_returns or progress.episodes > 0
        refill = not self.queue
        if progress.env_steps >= cfg.start_steps and ready:
            self.agent, self.key, chunk, self.metrics = _update_and_act(
                self.agent,
                self.buffer,
                self.key,
                self.obs,
                progress.env_steps,
                self.sampler,
                utd=cfg.utd_ratio,
                batch_size=cfg.batch_size,
                horizon=self.horizon,
                act=refill,
            )
            if refill:
                self.queue = self._chunk(chunk)
            progress.updates += cfg.utd_ratio
            self.updates_interval += cfg.utd_ratio
        elif self._acts_without_update():
            self.key, key_act = jax.random.split(self.key)
            self.queue = self._chunk(_act(self.agent, jnp.asarray(self.obs), key_act))
        progress.env_steps += 1

    def _next_action(self) -> np.ndarray:
        """The queue's next action, or a uniform random one during a random warm-up."""
        if self.progress.env_steps < self.agent.config.start_steps and self.needs.random_warmup:
            self.queue = []
            return self.np_rng.uniform(-1.0, 1.0, self.env.action_space.shape).astype(np.float32)
        return self.queue.pop(0)

    def _env_step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], bool]:
        """Step the environment with `action`: the transition (without `next_actions`) and
        whether the episode ended; the observation moves on unless it did."""
        next_obs, reward, terminated, truncated, info = self.env.step(action)
        next_obs = next_obs.astype(np.float32)
        transition = {
            "observations": self.obs,
            "actions": action,
            "rewards": np.float32(self.task.reward_transform(reward)),
            "next_observations": next_obs,
            "masks": np.float32(1.0 - terminated),
        }
        if self.horizon > 1:
            transition["ends"] = np.float32(terminated or truncated)
        self.episode_return += float(reward)
        self.episode_success |= bool(info.get("success", False))
        self.obs = next_obs
        return transition, bool(terminated or truncated)

    def _end_episode(self) -> None:
        """Log the finished episode and start the next (storing it first, with Monte-Carlo
        returns)."""
        progress = self.progress
        progress.episodes += 1
        steps = progress.env_steps + 1
        self.logger.log_episode(
            episode_record(
                self.task,
                self.step_offset + steps,
                steps,
                self.episode_return,
                self.episode_success,
            )
        )
        self.obs = self.env.reset()[0].astype(np.float32)
        self.episode_return, self.episode_success = 0.0, False
        self.queue = []  # the rest of the chunk was meant for the ended episode
        if self.mc_returns:
            self._store_episode()

    def _acts_without_update(self) -> bool:
        """Whether the agent draws a new chunk without updating (before `start_steps`): when
        the queue is empty and the next step acts with the policy."""
        next_step = self.progress.env_steps + 1
        return not self.queue and (
            next_step >= self.agent.config.start_steps or not self.needs.random_warmup
        )

    def _store_episode(self) -> None:
        """Store the finished episode with the discounted return from each of its steps (the
        rewards already transformed; Cal-QL's all-failure constant on sparse tasks)."""
        rewards = np.array([t["rewards"] for t in self.episode], np.float32)
        ends = np.zeros(len(rewards), bool)
        returns = discounted_returns(
            rewards, ends, self.agent.config.discount, self.task.failure_reward
        )
        for transition, mc_return in zip(self.episode, returns, strict=True):
            self.buffer = _store(self.buffer, transition | {"mc_returns": mc_return})
        self.episode = []

    def _evaluate_and_save(self, elapsed: float | None = None, together: int = 1) -> dict[str, Any]:
        """Evaluate, log and checkpoint; `elapsed`: the interval's seconds, when `together`
        seeds were stepped together (`SeedsOnlineLoop`), which measured it for all."""
        progress = self.progress
        step = self.step_offset + progress.env_steps
        q_bound = q_limit(self._reward_data(), self.agent.config.discount)
        check_finite(self.metrics, step, self.run_dir, "online", q_bound)
        if elapsed is None:
            elapsed = time.perf_counter() - self.t_interval
        progress.wall_s += elapsed
        record = {
            "step": self.step_offset + progress.env_steps,
            "phase": "online",
            "env_steps": progress.env_steps,
        }
        record |= self.evaluator(self.agent)
        record["updates_per_s"] = self.updates_interval / elapsed if self.updates_interval else 0.0
        record["device"] = device_kind()
        record["wall_s"] = progress.wall_s
        if together > 1:
            record["vmapped_seeds"] = together
        record |= {f"train/{k}": float(v) for k, v in self.metrics.items()}
        self.logger.log(record)
        seed = f"seed {self.seed}  " if together > 1 else ""
        console.print(
            f"step {progress.env_steps:>8}  {seed}return {record['return_mean']:9.1f}  "
            f"score {record['normalized_score']:6.1f}  q_bias {record['q_bias']:8.2f}  "
            f"{record['updates_per_s']:6.0f} updates/s"
        )
        progress.evaluations.append(
            {k: record[k] for k in ("env_steps", "normalized_score", "return_mean")}
        )
        if self.policy_dir is not None:
            self._save_policy(record)
        save_checkpoint(self.checkpoint_dir, self._state(), progress.__dict__)
        self.t_interval, self.updates_interval = time.perf_counter(), 0
        return record

    def _reward_data(self) -> list[ReplayBuffer]:
        """The data whose rewards the critic learns from (for `q_limit`)."""
        return [b for b in (self.sampler.offline, self.buffer) if b is not None]

    def _state(self) -> Any:
        """What a checkpoint holds besides the counters (the numpy RNG goes into those)."""
        self.progress.np_rng_state = self.np_rng.bit_generator.state
        return self.agent, self.buffer, self.key

    def _save_policy(self, record: dict[str, Any]) -> None:
        meta = {
            "task": self.task.name,
            "env_id": self.task.env_id,
            "hidden_dims": list(self.agent.config.hidden_dims),
            "observation_dim": int(self.env.observation_space.shape[0]),
            "action_dim": int(self.env.action_space.shape[0]),
            "env_steps": record["env_steps"],
            "eval_return_mean": record["return_mean"],
            "eval_return_std": record["return_std"],
            "eval_normalized_score": record["normalized_score"],
            "run_dir": str(self.run_dir),
        }
        path = self.policy_dir / f"step_{record['env_steps']:08d}.npz"
        save_policy(path, self.agent.actor.params, meta)


@dataclass
class SeedsOnlineLoop:
    """The online phase of several seeds of one configuration in lock-step (`o2o train
    --seeds`): each seed steps its own environment on the host, then one vmapped call stores
    the seeds' transitions, each in its own buffer, and one updates every agent on its own
    minibatches and draws its next actions. Each seed keeps its run directory, records and
    checkpoints (`loops`, one `OnlineLoop` per seed), matching a run of that seed alone to
    float tolerance. Agents that store whole episodes (Monte-Carlo returns: Cal-QL) are not
    stepped together (`applies`)."""

    loops: list[OnlineLoop]

    @staticmethod
    def applies(needs: Needs) -> bool:
        return needs.loop == "off_policy" and "mc_returns" not in needs.batch_fields

    def run(self) -> list[RunProgress]:
        loops = self.loops
        resumed = {loop._set_up() for loop in loops}
        steps = {loop.progress.env_steps for loop in loops}
        if len(steps) > 1 or len(resumed) > 1:
            raise ValueError(
                f"{', '.join(str(loop.run_dir) for loop in loops)}: their online checkpoints "
                f"are at different steps ({sorted(steps)}); resume them one seed at a time"
            )
        self.agent = stack([loop.agent for loop in loops])
        self.buffer = stack([loop.buffer for loop in loops])
        for loop in loops:
            loop.buffer = None  # held in the stack until the next checkpoint
        self.metrics: dict[str, Any] = {}
        self.t_interval = time.perf_counter()
        first, total = loops[0], loops[0].online_steps
        with progress_bar() as bar, StopRequest() as stop:
            label = f"online ({len(loops)} seeds)"
            task_id = bar.add_task(label, total=total, completed=first.progress.env_steps, info="")
            if not resumed.pop():
                self._evaluate_and_save()
            while first.progress.env_steps < total:
                before = first.progress.env_steps
                self._step()
                steps = first.progress.env_steps
                bar.advance(task_id, 1)
                if first._evaluation_due(before):
                    returns = [r["return_mean"] for r in self._evaluate_and_save()]
                    bar.update(task_id, info=f"return {' '.join(f'{r:.0f}' for r in returns)}")
                if stop.requested:
                    elapsed = time.perf_counter() - self.t_interval
                    for k, loop in enumerate(loops):
                        self._hand_back(k)
                        loop.progress.wall_s += elapsed
                        save_checkpoint(loop.checkpoint_dir, loop._state(), loop.progress.__dict__)
                    raise Interrupted(
                        f"stopped by Ctrl-C at online step {steps}, checkpoints saved in "
                        f"{', '.join(str(loop.run_dir) for loop in loops)}: the same command "
                        "resumes there"
                    )
        for loop in loops:
            loop.logger.close()
        return [loop.progress for loop in loops]

    def _step(self) -> None:
        """`OnlineLoop._step` for every seed: the host's environment steps, then one vmapped
        store and one vmapped update (or, before `start_steps`, the actions of the seeds whose
        queue is empty)."""
        loops = self.loops
        first = loops[0]
        cfg, env_step = first.agent.config, first.progress.env_steps
        stepped = [loop._env_step(loop._next_action()) for loop in loops]
        transitions = [transition for transition, _ in stepped]
        if "next_actions" in first.needs.batch_fields:  # each agent's own action at s'
            keys = [jax.random.split(loop.key) for loop in loops]
            for loop, (key, _) in zip(loops, keys, strict=True):
                loop.key = key
            next_obs = np.stack([t["next_observations"] for t in transitions])
            actions = np.asarray(_act_seeds(self.agent, next_obs, stack([k for _, k in keys])))
            for transition, action in zip(transitions, actions, strict=True):
                transition["next_actions"] = action
        batch = {name: np.stack([t[name] for t in transitions]) for name in transitions[0]}
        self.buffer = _store_seeds(self.buffer, batch)
        for loop, (_, ended) in zip(loops, stepped, strict=True):
            if ended:
                loop._end_episode()
        refill = [not loop.queue for loop in loops]
        observations = np.stack([loop.obs for loop in loops])
        if env_step >= cfg.start_steps:
            self.agent, keys, chunks, self.metrics = _update_and_act_seeds(
                self.agent,
                self.buffer,
                stack([loop.key for loop in loops]),
                observations,
                env_step,
                first.sampler,
                utd=cfg.utd_ratio,
                batch_size=cfg.batch_size,
                horizon=first.horizon,
            )
            chunks = np.asarray(chunks)
            for k, loop in enumerate(loops):
                loop.key = keys[k]
                if refill[k]:
                    loop.queue = loop._chunk(chunks[k])
                loop.progress.updates += cfg.utd_ratio
                loop.updates_interval += cfg.utd_ratio
        else:
            acting = [loop._acts_without_update() for loop in loops]
            if any(acting):  # a seed whose queue is full draws nothing and keeps its key
                keys = []
                for loop, acts in zip(loops, acting, strict=True):
                    key_act = loop.key  # unused where the seed does not act
                    if acts:
                        loop.key, key_act = jax.random.split(loop.key)
                    keys.append(key_act)
                chunks = np.asarray(_act_seeds(self.agent, observations, stack(keys)))
                for k, loop in enumerate(loops):
                    if acting[k]:
                        loop.queue = loop._chunk(chunks[k])
        for loop in loops:
            loop.progress.env_steps += 1

    def _hand_back(self, k: int) -> None:
        """Seed `k`'s agent, buffer and metrics from the stacks into its loop."""
        loop = self.loops[k]
        loop.agent, loop.buffer = unstack(self.agent, k), unstack(self.buffer, k)
        loop.metrics = {name: value[k] for name, value in self.metrics.items()}

    def _evaluate_and_save(self) -> list[dict[str, Any]]:
        """Evaluate, log and checkpoint every seed; their records."""
        jax.block_until_ready(self.agent)
        elapsed = time.perf_counter() - self.t_interval
        records = []
        for k, loop in enumerate(self.loops):
            self._hand_back(k)
            records.append(loop._evaluate_and_save(elapsed, together=len(self.loops)))
            loop.buffer = None
        self.t_interval = time.perf_counter()
        return records
