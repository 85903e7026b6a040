"""`train(config)`: load data, build the agent, offline phase -> switch -> online phase, then
the run's summary. Either phase may have zero steps (RLPD has no offline phase; an offline
benchmark no online one). Offline data also feeds online batches (`data_mix`: the agent's
`offline_ratio`, a linear decay of it, or proportional to the sizes).

The switch applies the agent's own rule (`on_switch`: CQL's `cql_alpha_online`, ReBRAC's
critic penalty off, ...), then the generic hooks: `freeze` parts and `reset_optimizers`.
Random warm-up steps online are the agent's `start_steps`. On-policy agents (FPO) train
online on their own rollouts (`o2o.train.onpolicy`), without a replay buffer.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

from o2o.agents import get_agent
from o2o.agents.base import chunk_horizon, switch_parts
from o2o.agents.sac import SAC
from o2o.checkpoint import load_checkpoint
from o2o.data.buffer import MixedSampler, ReplayBuffer
from o2o.data.dataset import Dataset, discounted_returns
from o2o.data.formats import load_dataset
from o2o.data.generate import make_dataset
from o2o.diagnostics.finetune import finetune_metrics
from o2o.envs.tasks import (
    DEFAULT_TASK,
    ObservationNormalizer,
    RewardTransform,
    Task,
    get_task,
    parse_task,
)
from o2o.logging import console, read_metrics
from o2o.train.offline import OfflineLoop
from o2o.train.online import OnlineLoop, example_transition
from o2o.train.onpolicy import OnPolicyLoop

TRANSFORMS_FILE = "transforms.json"  # the units the agent learned in (rewards, observations)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs; saved as `config.json` in the run directory."""

    algo: str = "sac"
    """Algorithm name (the list is above)."""
    task: str = DEFAULT_TASK
    """Task, e.g. hopper, or a dataset TASK-LEVEL (hopper-medium: generated on first use)."""
    offline_steps: int = 0
    """Gradient updates on the offline dataset before the online phase."""
    online_steps: int = 100_000
    """Environment steps of online training."""
    seed: int = 0
    """Seeds the networks, the warm-up actions and the environment."""
    out: Path | None = None
    """Run directory; default runs/TASK-ALGO-seedS. An existing run there is resumed."""
    dataset: Path | None = None
    """Offline data file (native .npz, D4RL .hdf5, Minari folder, OGBench .npz) instead of a
    generated TASK-LEVEL; mixed into online batches at the agent's offline_ratio."""
    dataset_size: int | None = None
    """Transitions of a generated TASK-LEVEL dataset (default: D4RL's size for the level)."""
    eval_interval: int = 5000
    """Offline updates or environment steps between evaluations (and checkpoints)."""
    eval_episodes: int = 10
    """Deterministic episodes per evaluation, from fixed reset seeds."""
    holdout_episodes: int = 10
    """Dataset episodes kept out of training (evenly spaced, the same for every seed and
    algorithm; at most a tenth of the dataset's): every evaluation compares Q of their logged
    actions with their Monte-Carlo return (holdout_q_bias). 0: train on every episode."""
    data_mix: Literal["fixed", "proportional", "linear"] = "fixed"
    """How online batches mix in offline data: fixed (the agent's offline_ratio), proportional
    (uniform over dataset and online buffer: Cal-QL's mixing_ratio < 0, CORL's one buffer) or
    linear (offline_ratio decaying to 0 over the online steps)."""
    freeze: tuple[str, ...] = ()
    """Agent parts left as pre-trained online (e.g. actor): their optimiser becomes a no-op at
    the switch."""
    reset_optimizers: bool = False
    """Re-initialise every optimiser state (Adam moments) at the offline-to-online switch."""
    save_policies: bool = False
    """Keep the policy at every evaluation in RUN_DIR/policies (behaviour-policy snapshots of
    the tanh-Gaussian SAC family, the format `o2o.zoo` loads)."""
    agent: Any = None
    """Agent hyperparameters; defaults are the algorithm's reference recipe."""

    def run_dir(self) -> Path:
        return self.out or Path("runs") / f"{self.task}-{self.algo}-seed{self.seed}"


def default_config(algo: str, **overrides) -> TrainConfig:
    """A TrainConfig for `algo` with its reference agent recipe."""
    spec = get_agent(algo)
    return config_type(algo)(algo=algo, agent=spec.default_config, **overrides)


@functools.cache
def config_type(algo: str) -> type[TrainConfig]:
    """TrainConfig whose `agent` field has `algo`'s config type (what the CLI parses)."""
    agent_type = type(get_agent(algo).default_config)
    return dataclasses.make_dataclass(
        "TrainConfig",
        [("agent", agent_type, dataclasses.field(default_factory=agent_type))],
        bases=(TrainConfig,),
        frozen=True,
    )


def load_config(run_dir: Path) -> TrainConfig:
    """The configuration a run directory was made with, to rerun or extend it."""
    saved = json.loads((Path(run_dir) / "config.json").read_text())
    agent = saved.pop("agent")
    agent = {k: tuple(v) if isinstance(v, list) else v for k, v in agent.items()}  # JSON lists
    saved["freeze"] = tuple(saved.get("freeze", ()))
    agent = dataclasses.replace(get_agent(saved["algo"]).default_config, **agent)
    dataset = saved.pop("dataset")
    return config_type(saved["algo"])(
        **saved | {"out": Path(run_dir), "agent": agent},
        dataset=None if dataset is None else Path(dataset),
    )


def _config_json(config: TrainConfig) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def _differences(saved: dict, current: dict, defaults: dict, prefix: str = "") -> list[str]:
    """Fields whose saved value differs from the current one; a field the saved config lacks
    (added to o2o after the run started) counts as holding its default."""
    diffs = []
    for key, value in current.items():
        name = f"{prefix}{key}"
        old = saved.get(key, defaults.get(key))
        if isinstance(value, dict) and isinstance(old, dict):
            diffs += _differences(old, value, defaults.get(key) or {}, f"{name}.")
        elif old != value:
            diffs.append(f"{name} (saved {old!r}, now {value!r})")
    return diffs


def check_resumable(run_dir: Path, config: TrainConfig) -> None:
    """A run directory is reused only by the same configuration (online_steps may grow):
    raises ValueError naming the fields that differ. The saved run's `offline_ratio` is not
    compared when that run never mixed batches with it (no online steps, or --data-mix
    proportional), so an offline run can be extended online with a ratio of its own."""
    saved = json.loads((run_dir / "config.json").read_text())
    current = {k: v for k, v in _config_json(config).items() if k not in ("online_steps", "out")}
    if saved.get("online_steps") == 0 or saved.get("data_mix") == "proportional":
        current["agent"].pop("offline_ratio", None)
    defaults = _config_json(default_config(config.algo))
    diff = _differences(saved, current, defaults)
    if diff:
        raise ValueError(
            f"{run_dir} holds a run with a different configuration: {'; '.join(diff)}. "
            "Choose another --out, or delete that directory to start over"
        )


def train(config: TrainConfig) -> Path:
    """Run training as configured; returns the run directory."""
    spec = get_agent(config.algo)
    task, level = parse_task(config.task)
    if not isinstance(config.agent, type(spec.default_config)):
        raise TypeError(f"algo '{config.algo}' needs a {type(spec.default_config).__name__}")
    if config.dataset is not None and level is not None:
        raise ValueError(
            f"--task {config.task} names a dataset and --dataset gives another; use --task "
            f"{task.name} with --dataset, or drop --dataset"
        )
    if config.save_policies and not issubclass(spec.agent_cls, SAC):
        raise ValueError(
            f"--save-policies keeps tanh-Gaussian actors (the SAC family: sac, rlpd, cql...) in "
            f"the zoo's format; {config.algo}'s actor is not one: drop --save-policies"
        )
    on_policy = getattr(spec.agent_cls, "on_policy", False)
    if on_policy and config.data_mix != "fixed":
        raise ValueError(
            f"--data-mix {config.data_mix}: {config.algo} is on-policy and updates on its own "
            "rollouts only, so no offline data is mixed in online; drop --data-mix"
        )
    run_dir = config.run_dir()
    if (run_dir / "config.json").exists():
        check_resumable(run_dir, config)
        console.print(f"resuming the run in {run_dir}")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(_config_json(config), indent=1))

    env = task.make_env()
    obs_space, act_space = env.observation_space, env.action_space
    env.close()
    dataset = None
    if config.dataset is not None:
        dataset, _ = load_dataset(config.dataset, act_space.low, act_space.high)
    elif level is not None:
        dataset, _ = make_dataset(config.task, config.dataset_size)
    offline = offline_phase_data = holdout = None
    uses_mc_returns = getattr(spec.agent_cls, "uses_mc_returns", False)
    if dataset is not None:
        if dataset.observation_dim != obs_space.shape[0]:
            raise ValueError(
                f"{dataset.source}: observations have dim {dataset.observation_dim} but task "
                f"'{task.name}' has {obs_space.shape[0]}; pick the matching --task"
            )
        dataset, holdout = hold_out_episodes(dataset, config.holdout_episodes)
        task = learning_task(task, dataset, config.agent)
        (run_dir / TRANSFORMS_FILE).write_text(json.dumps(_transforms_json(task), indent=1))
        transitions = dataset.transitions()
        transitions["rewards"] = task.reward_transform(transitions["rewards"])
        if task.observation_normalizer is not None:
            for key in ("observations", "next_observations"):
                transitions[key] = task.observation_normalizer(transitions[key])
        if uses_mc_returns:  # Cal-QL: the discounted return of the transformed rewards
            transitions["mc_returns"] = discounted_returns(
                transitions["rewards"],
                dataset.episode_ends,
                config.agent.discount,
                task.failure_reward,
            )
        if chunk_horizon(config.agent) > 1:  # windows of steps stop at episode ends
            transitions["ends"] = dataset.episode_ends.astype(np.float32)
        offline = ReplayBuffer.from_arrays(transitions)
        if getattr(config.agent, "critic_bc", 0.0):  # ReBRAC reads the next logged action
            extra = {"next_actions": jnp.asarray(dataset.next_actions())}
            offline_phase_data = offline.replace(data=offline.data | extra)
    elif config.offline_steps > 0:
        raise ValueError(
            f"--offline-steps {config.offline_steps} needs offline data: name a dataset with "
            f"--task {task.name}-LEVEL (levels: {', '.join(task.levels)}) or --dataset PATH"
        )
    elif config.agent.offline_ratio > 0:
        console.print(
            f"[yellow]no offline data (--task TASK-LEVEL or --dataset): {config.algo} trains on "
            f"online data only (offline_ratio {config.agent.offline_ratio} ignored)"
        )
    sampler = MixedSampler.create(
        offline,
        config.agent.offline_ratio,
        schedule=optax.linear_schedule(config.agent.offline_ratio, 0.0, config.online_steps)
        if config.data_mix == "linear"
        else None,
        proportional=config.data_mix == "proportional",
    )
    agent = spec.agent_cls.create(config.agent, obs_space, act_space, config.seed)
    phases = {}
    if config.offline_steps > 0:
        agent, phases["offline"] = OfflineLoop(
            task,
            agent,
            offline if offline_phase_data is None else offline_phase_data,
            run_dir,
            config.offline_steps,
            config.seed,
            config.eval_interval,
            config.eval_episodes,
            holdout=holdout,
        ).run()
        agent = switch_parts(agent.on_switch(config.agent), config.freeze, config.reset_optimizers)
    if config.online_steps > 0:
        loop = OnPolicyLoop if on_policy else OnlineLoop
        phases["online"] = loop(
            task,
            agent,
            sampler,
            run_dir,
            config.online_steps,
            config.seed,
            config.eval_interval,
            config.eval_episodes,
            policy_dir=run_dir / "policies" if config.save_policies else None,
            step_offset=config.offline_steps,
            holdout=holdout,
            mc_returns=uses_mc_returns,
        ).run()
    _write_summary(run_dir, config, phases)
    return run_dir


def run_task(run_dir: Path) -> Task:
    """The task as a run's agent saw it: the registry's, with the reward transform and the
    observation normaliser the run learned under (to convert its data back to env units)."""
    task = get_task(load_config(run_dir).task)
    path = Path(run_dir) / TRANSFORMS_FILE
    if not path.exists():
        return task
    saved = json.loads(path.read_text())
    obs = saved["observation_normalizer"]
    return dataclasses.replace(
        task,
        reward_transform=RewardTransform(**saved["reward_transform"]),
        observation_normalizer=None
        if obs is None
        else ObservationNormalizer(tuple(obs["mean"]), tuple(obs["std"])),
    )


def _transforms_json(task: Task) -> dict:
    obs = task.observation_normalizer
    return {
        "reward_transform": dataclasses.asdict(task.reward_transform),
        "observation_normalizer": None if obs is None else dataclasses.asdict(obs),
    }


def hold_out_episodes(dataset: Dataset, count: int) -> tuple[Dataset, Dataset | None]:
    """(training data, held-out episodes or None): `count` episodes, at most a tenth."""
    count = min(count, len(dataset.episodes()) // 10)
    if count <= 0:
        return dataset, None
    dataset, holdout = dataset.hold_out(count)
    console.print(f"{count} episodes ({len(holdout)} transitions) held out for holdout_q_bias")
    return dataset, holdout


def learning_task(task: Task, dataset: Dataset, agent_config: Any) -> Task:
    """The task as the agent learns it, from what its config asks for:
    - `normalize_observations` (TD3+BC's recipe): states standardised by the dataset's mean
      and std, offline and, through `Task.make_env`, online and in evaluation;
    - `reward_scale_by_return_range` (IQL's locomotion recipe): the registry's reward transform
      followed by a scale that makes the dataset's episode returns span 1000.
    Online rewards and Q-bias use the same transforms."""
    if getattr(agent_config, "normalize_observations", False):
        normalizer = ObservationNormalizer.fit(dataset.observations)
        task = dataclasses.replace(task, observation_normalizer=normalizer)
    if not getattr(agent_config, "reward_scale_by_return_range", False):
        return task
    returns = dataset.episode_returns(task.reward_transform(dataset.rewards))
    span = float(returns.max() - returns.min())
    if span <= 0:
        raise ValueError(
            f"{dataset.source}: every episode has the same return, so rewards cannot be scaled "
            "by the return range; pass --agent.no-reward-scale-by-return-range"
        )
    console.print(f"rewards scaled by 1000 / {span:.1f} (episode return range of the dataset)")
    return dataclasses.replace(task, reward_transform=task.reward_transform.scaled(1000 / span))


def replay_transitions(run_dir: Path) -> dict[str, np.ndarray]:
    """The online replay buffer of a run's latest checkpoint, in insertion order (rewards and
    observations as the agent saw them, after the run's transforms: `run_task`)."""
    config = load_config(run_dir)
    spec = get_agent(config.algo)
    if getattr(spec.agent_cls, "on_policy", False):
        raise ValueError(
            f"{run_dir}: {config.algo} is on-policy; it keeps no replay buffer to export"
        )
    env = get_task(config.task).make_env()
    agent = spec.agent_cls.create(config.agent, env.observation_space, env.action_space, 0)
    if config.offline_steps > 0:  # the checkpoint holds the switched agent (frozen parts...)
        agent = switch_parts(agent.on_switch(config.agent), config.freeze, config.reset_optimizers)
    checkpoint = Path(run_dir) / "checkpoints" / "latest"
    capacity = json.loads((checkpoint / "progress.json").read_text())["buffer_capacity"]
    example = example_transition(
        env,
        getattr(spec.agent_cls, "uses_mc_returns", False),
        ends=chunk_horizon(config.agent) > 1,
    )
    template = (agent, ReplayBuffer.create(example, capacity), jax.random.key(0))
    (_, buffer, _), _ = load_checkpoint(checkpoint, template)
    if int(buffer.size) == buffer.capacity and int(buffer.cursor) != 0:
        raise ValueError(f"{run_dir}: the replay buffer wrapped around; its order is lost")
    return {k: np.asarray(v[: int(buffer.size)]) for k, v in buffer.data.items()}


def _write_summary(run_dir: Path, config: TrainConfig, phases: dict[str, Any]) -> None:
    """summary.json: per phase, the final and best evaluation, updates and time; with an online
    phase, the fine-tuning metrics (`o2o.diagnostics.finetune`: dip, recovery, regret)."""
    summary: dict[str, Any] = {"algo": config.algo, "task": config.task, "seed": config.seed}
    for name, progress in phases.items():
        evals = progress.evaluations
        best = max(evals, key=lambda e: e["normalized_score"])
        prefix = "" if name == "online" else "offline_"
        summary |= {
            f"{prefix}final_score": evals[-1]["normalized_score"],
            f"{prefix}final_return": evals[-1]["return_mean"],
            f"{prefix}best_score": best["normalized_score"],
            f"{prefix}best_return": best["return_mean"],
            f"{prefix}updates": progress.updates,
            f"{prefix}wall_s": progress.wall_s,
            f"{prefix}updates_per_s": progress.updates / progress.wall_s
            if progress.wall_s
            else 0.0,
        }
        if name == "online":
            summary |= {"env_steps": progress.env_steps, "best_env_steps": best["env_steps"]}
            summary |= finetune_metrics(read_metrics(run_dir))
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    last = "" if "online" in phases else "offline_"
    console.print(
        f"final return {summary[last + 'final_return']:.1f} "
        f"(score {summary[last + 'final_score']:.1f}), best {summary[last + 'best_return']:.1f}; "
        f"run directory: {run_dir}"
    )
