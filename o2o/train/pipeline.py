"""`train(config)`: load data, build the agent, offline phase -> switch -> online phase, then
the run's summary. Either phase may have zero steps (RLPD has no offline phase; an offline
benchmark no online one). Offline data also feeds online batches (`data_mix`: the agent's
`offline_ratio`, a linear decay of it, or proportional to the sizes).

The switch (`switch`) applies the agent's own rule (`on_switch`: CQL's `cql_alpha_online`,
ReBRAC's critic penalty off, ...), then the generic hooks: `freeze` parts and
`reset_optimizers`. Random warm-up steps online are the agent's `start_steps`.

What the data, the loops and the transforms must provide is the agent's declaration
(`agent.needs(phase)`, `o2o.agents.base.Needs`), read here and by the loops: extra batch
fields (ReBRAC's next actions, Cal-QL's Monte-Carlo returns), windows of steps (QC), the
warm-up, the observation and reward transforms, on-policy rollouts instead of a replay buffer
(FPO: `o2o.train.onpolicy`), and the policy file format.

The agent's recipe is a preset of its algorithm chosen by the task (`task_preset`: the
dataset's, the task's or the task family's), recorded as `preset` in config.json.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import jax
import numpy as np
import optax

from o2o.agents import get_agent
from o2o.agents.base import Needs, Phase, check_agent_config, switch_parts
from o2o.checkpoint import find_checkpoint, load_checkpoint, locked
from o2o.data.buffer import MixedSampler, ReplayBuffer
from o2o.data.dataset import Dataset, discounted_returns
from o2o.data.formats import load_dataset
from o2o.data.generate import make_dataset
from o2o.diagnostics.finetune import finetune_metrics
from o2o.envs.tasks import (
    DEFAULT_TASK,
    TASKS,
    ObservationNormalizer,
    RewardTransform,
    Task,
    get_task,
    parse_task,
)
from o2o.logging import (
    console,
    device_kind,
    read_episodes,
    read_json,
    read_metrics,
    write_json,
)
from o2o.train.offline import OfflineLoop, checkpoint_dir, offline_record, saved_updates
from o2o.train.online import (
    OnlineLoop,
    SeedsOnlineLoop,
    example_transition,
    online_checkpoint_dir,
    saved_env_steps,
)
from o2o.train.onpolicy import OnPolicyLoop

TRANSFORMS_FILE = "transforms.json"  # the units the agent learned in (rewards, observations)
PHASES = ("offline", "online")


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
    eval_device: Literal["default", "cpu"] = "default"
    """Where the agent acts in evaluations: where it trains, or the CPU (faster where many runs
    share a GPU and the policy is small: each step's call waits for the GPU)."""
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
    """Agent hyperparameters; defaults are the algorithm's reference recipe for the task."""
    preset: str | None = None
    """The recipe `agent` started from (a task family, task or dataset name; `o2o train`
    picks the task's, --preset NAME another); --agent.* flags override its fields."""

    def __post_init__(self):
        """Refuse values that cannot mean anything, before anything runs (ValueError naming the
        flag); the agent's fields as `check_agent_config`."""
        problems = [
            f"--{name.replace('_', '-')} {getattr(self, name)}: {rule}"
            for name, bad, rule in (
                ("offline_steps", self.offline_steps < 0, "must not be negative"),
                ("online_steps", self.online_steps < 0, "must not be negative"),
                ("seed", self.seed < 0, "must not be negative"),
                ("eval_interval", self.eval_interval < 1, "must be at least 1"),
                ("eval_episodes", self.eval_episodes < 1, "must be at least 1"),
                ("holdout_episodes", self.holdout_episodes < 0, "must not be negative"),
                (
                    "dataset_size",
                    self.dataset_size is not None and self.dataset_size < 1,
                    "give at least 1 transition",
                ),
            )
            if bad
        ]
        if not problems and self.offline_steps == 0 and self.online_steps == 0:
            problems.append(
                "--offline-steps 0 and --online-steps 0: the run has no phase; give either"
            )
        if self.out is not None and self.out.exists() and not self.out.is_dir():
            problems.append(f"--out {self.out}: is a file; give a directory for the run")
        if problems:
            raise ValueError("; ".join(problems))
        if self.agent is not None:
            check_agent_config(self.agent)

    def run_dir(self) -> Path:
        return self.out or Path("runs") / f"{self.task}-{self.algo}-seed{self.seed}"


def default_config(
    algo: str, task: str = DEFAULT_TASK, preset: str | None = None, **overrides
) -> TrainConfig:
    """A TrainConfig for `algo` on `task` with the reference recipe for that task
    (`task_preset`), or the named `preset`; an `agent` given among the overrides replaces the
    recipe (the config then names no preset)."""
    spec = get_agent(algo)
    if "agent" in overrides:
        agent, preset = overrides.pop("agent"), None
    elif preset is None:
        preset, agent = task_preset(algo, task)
    elif preset in spec.presets:
        agent = spec.presets[preset]
    else:
        raise ValueError(
            f"--preset {preset}: {algo} has no such recipe; its presets: {', '.join(spec.presets)}"
        )
    return config_type(algo)(algo=algo, task=task, agent=agent, preset=preset, **overrides)


def task_preset(algo: str, task: str) -> tuple[str, Any]:
    """(name, agent config) of `algo`'s reference recipe for `task` (TASK or TASK-LEVEL): the
    dataset's own, else the task's, else its family's (locomotion, navigation), else the
    algorithm's default."""
    found, level = parse_task(task)
    return get_agent(algo).preset(*found.preset_keys(level))


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
    if not (Path(run_dir) / "config.json").is_file():
        raise FileNotFoundError(
            f"{run_dir}: not a run directory (no config.json); pass one made by `o2o train`"
        )
    saved = read_json(Path(run_dir) / "config.json")
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


# Agent fields added after runs existed whose default is not what those runs did: a saved
# config without the field ran with this value (FQL and QC had ReLU networks before 2026-12-03).
VALUES_BEFORE_FIELD = {"fql": {"activation": "relu"}, "qc": {"activation": "relu"}}


def run_dataset(config: TrainConfig, spaces=None) -> Dataset | None:
    """The data a run trains on, all of it (before episodes are held out): `--dataset`'s file,
    checked against the task, or the generated TASK-LEVEL; None for an online-only run.
    `spaces`: the task's, when the caller has them."""
    task, level = parse_task(config.task)
    if config.dataset is not None:
        return task.check_dataset(load_dataset(config.dataset)[0], spaces)
    if level is not None:
        return make_dataset(config.task, config.dataset_size)[0]
    return None


def check_resumable(run_dir: Path, config: TrainConfig) -> None:
    """A run directory is reused only by the same configuration (online_steps may grow):
    raises ValueError naming the fields that differ. An offline run (no online steps) extended
    online may change eval_interval, since its online phase counts environment steps, not
    updates (`o2o demo --pretrained`). The saved run's `offline_ratio` is not compared when
    that run never mixed batches with it (no online steps, or --data-mix proportional), so an
    offline run can be extended online with a ratio of its own. The preset's name is not
    compared (runs from before it existed lack it); its fields are."""
    saved = read_json(run_dir / "config.json")
    # preset: a label, the agent's fields count; eval_device: where evaluations act, not what
    ignored = ("online_steps", "out", "preset", "eval_device")
    current = {k: v for k, v in _config_json(config).items() if k not in ignored}
    if saved.get("online_steps") == 0 or saved.get("data_mix") == "proportional":
        current["agent"].pop("offline_ratio", None)
    if saved.get("online_steps") == 0 and config.online_steps > 0:
        current.pop("eval_interval")
    defaults = _config_json(default_config(config.algo))
    defaults["agent"] |= VALUES_BEFORE_FIELD.get(config.algo, {})
    diff = _differences(saved, current, defaults)
    if diff:
        raise ValueError(
            f"{run_dir} holds a run with a different configuration: {'; '.join(diff)}. "
            "Choose another --out (in a sweep file: out or run_name), or delete that directory "
            "to start over"
        )


def train(config: TrainConfig) -> Path:
    """Run training as configured; returns the run directory."""
    return train_together([config])[0]


def seed_configs(config: TrainConfig, seeds: Sequence[int]) -> list[TrainConfig]:
    """`config` once per seed (`o2o train --seeds`); with several seeds, `--out DIR` becomes
    DIR/seedS (the default run directory already names the seed)."""
    if len(seeds) == 1:
        return [dataclasses.replace(config, seed=seeds[0])]
    return [
        dataclasses.replace(
            config, seed=s, out=None if config.out is None else config.out / f"seed{s}"
        )
        for s in seeds
    ]


def train_together(configs: Sequence[TrainConfig]) -> list[Path]:
    """Train runs that differ only in their seed and run directory, each in its own ordinary
    run directory; returns them. The data is made once, and the offline phase updates every
    seed in one vmapped call (`OfflineLoop`), and the online phase steps them together
    (`SeedsOnlineLoop`; Cal-QL's and on-policy agents' one after another).
    Each run directory is locked meanwhile: a second process on it stops at once."""
    if not configs:
        raise ValueError("no runs to train")
    with locked([c.run_dir() for c in configs]):
        return _train_together(configs)


def _train_together(configs: Sequence[TrainConfig]) -> list[Path]:
    config = configs[0]
    seeds = [c.seed for c in configs]
    run_dirs = [c.run_dir() for c in configs]
    same = {dataclasses.replace(c, seed=0, out=None) for c in configs}
    if len(same) > 1 or len(set(seeds)) < len(seeds) or len(set(run_dirs)) < len(run_dirs):
        raise ValueError(
            "runs trained together must differ only in their seeds (distinct) and run "
            f"directories (distinct); got seeds {seeds} in {', '.join(map(str, run_dirs))}"
        )
    spec = get_agent(config.algo)
    task, level = parse_task(config.task)
    if not isinstance(config.agent, type(spec.default_config)):
        raise TypeError(f"algo '{config.algo}' needs a {type(spec.default_config).__name__}")
    if config.dataset is not None and level is not None:
        raise ValueError(
            f"--task {config.task} names a dataset and --dataset gives another; use --task "
            f"{task.name} with --dataset, or drop --dataset"
        )
    critic_bc = getattr(config.agent, "critic_bc", 0.0)  # ReBRAC's, whose switch changes it
    online_critic_bc = getattr(config.agent, "online_critic_bc", critic_bc)
    if config.offline_steps == 0 and config.online_steps > 0 and critic_bc != online_critic_bc:
        raise ValueError(
            f"{config.algo}'s critic penalty is {critic_bc:g} offline and {online_critic_bc:g} "
            "online, and it changes at the offline-to-online switch, which a run without "
            f"offline steps never reaches: pass --agent.critic-bc {online_critic_bc:g} to train "
            "online from the start with the online setting, or --offline-steps N"
        )
    obs_space, act_space = task.spaces()  # no observation normaliser yet: make_env's too
    agents = [spec.agent_cls.create(config.agent, obs_space, act_space, seed) for seed in seeds]
    needs = {phase: agents[0].needs(phase) for phase in PHASES}
    if config.save_policies and needs["online"].policy_format is None:
        raise ValueError(
            f"--save-policies keeps tanh-Gaussian actors (the SAC family: sac, rlpd, cql...) in "
            f"the zoo's format; {config.algo}'s actor is not one: drop --save-policies"
        )
    if needs["online"].loop == "on_policy" and config.data_mix != "fixed":
        raise ValueError(
            f"--data-mix {config.data_mix}: {config.algo} is on-policy and updates on its own "
            "rollouts only, so no offline data is mixed in online; drop --data-mix"
        )
    for run_dir, seed_cfg in zip(run_dirs, configs, strict=True):
        if (run_dir / "config.json").exists():
            check_resumable(run_dir, seed_cfg)
            console.print(f"resuming the run in {run_dir}")
    _print_preset(config)
    _warn_without_effect(config, needs, level)

    dataset = run_dataset(config, (obs_space, act_space))
    buffers = {phase: None for phase in PHASES}  # the dataset as each phase's batches see it
    holdout = None
    if dataset is not None:
        dataset, holdout = hold_out_episodes(dataset, config.holdout_episodes)
        task = learning_task(task, dataset, needs["offline"])
        buffers = dataset_buffers(dataset, task, config.agent.discount, needs)
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
    if dataset is None:  # online from scratch: only the transforms that need no data
        task = learning_task(task, None, needs["online"])
    # Written only once the data is loaded and checked: a refused command leaves nothing
    # that would block the corrected one.
    for run_dir, seed_cfg in zip(run_dirs, configs, strict=True):
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(_config_json(seed_cfg), indent=1))
        (run_dir / TRANSFORMS_FILE).write_text(json.dumps(_transforms_json(task), indent=1))
    phases: list[dict[str, Any]] = [{} for _ in seeds]
    if config.offline_steps > 0:
        # A run whose online phase has begun keeps its offline phase as it is, even with its
        # offline checkpoint gone; the online checkpoint holds the agent.
        pending = []
        for k, run_dir in enumerate(run_dirs):
            if find_checkpoint(online_checkpoint_dir(run_dir)) is None:
                pending.append(k)
            else:
                agents[k], phases[k]["offline"] = switch(agents[k], config), offline_record(run_dir)
        # Seeds resume together when their checkpoints agree, else one at a time.
        together = len({saved_updates(run_dirs[k]) for k in pending}) <= 1
        groups = [pending] if together else [[k] for k in pending]
        for group in filter(None, groups):
            trained, progress = OfflineLoop(
                task,
                [agents[k] for k in group],
                buffers["offline"],
                [run_dirs[k] for k in group],
                config.offline_steps,
                [seeds[k] for k in group],
                config.eval_interval,
                config.eval_episodes,
                holdout=holdout,
                horizon=needs["offline"].horizon,
                eval_device=config.eval_device,
            ).run()
            for k, agent, done in zip(group, trained, progress, strict=True):
                agents[k], phases[k]["offline"] = switch(agent, config), done
    together = False
    if config.online_steps > 0:  # one sampler for every seed: each loop keeps its own buffer
        sampler = MixedSampler.create(
            buffers["online"],
            config.agent.offline_ratio,
            schedule=optax.linear_schedule(config.agent.offline_ratio, 0.0, config.online_steps)
            if config.data_mix == "linear"
            else None,
            proportional=config.data_mix == "proportional",
        )
        loop = OnPolicyLoop if needs["online"].loop == "on_policy" else OnlineLoop
        loops = [
            loop(
                task,
                agents[k],
                sampler,
                run_dirs[k],
                config.online_steps,
                seed_cfg.seed,
                config.eval_interval,
                config.eval_episodes,
                policy_dir=run_dirs[k] / "policies" if config.save_policies else None,
                step_offset=config.offline_steps,
                holdout=holdout,
                needs=needs["online"],
                eval_device=config.eval_device,
            )
            for k, seed_cfg in enumerate(configs)
        ]
        # Seeds step together when their checkpoints agree, else one after another.
        together = (
            len(configs) > 1
            and SeedsOnlineLoop.applies(needs["online"])
            and len({saved_env_steps(d) for d in run_dirs}) == 1
        )
        if together:
            for k, progress in enumerate(SeedsOnlineLoop(loops).run()):
                phases[k]["online"] = progress
    for k, seed_cfg in enumerate(configs):
        if config.online_steps > 0 and not together:
            phases[k]["online"] = loops[k].run()
        _write_summary(run_dirs[k], seed_cfg, phases[k])
    return run_dirs


def _warn_without_effect(config: TrainConfig, needs: dict[str, Needs], level: str | None) -> None:
    """Say which flags the configuration makes pointless (they are kept, and recorded)."""
    default = default_config(config.algo)
    data = config.dataset is not None or level is not None
    generated = level is not None and config.dataset is None
    online = config.online_steps > 0
    switches = config.offline_steps > 0 and online
    no_switch = "it applies at the offline-to-online switch, and this run has none"
    for flag, pointless, why in (
        ("--freeze", config.freeze and not switches, no_switch),
        ("--reset-optimizers", config.reset_optimizers and not switches, no_switch),
        (
            "--dataset-size",
            config.dataset_size is not None and not generated,
            "it sizes a generated TASK-LEVEL dataset, and this run has none",
        ),
        (
            "--data-mix",
            config.data_mix != default.data_mix and not (online and data),
            "it mixes offline data into online batches, and this run has no "
            + ("online phase" if data else "offline data"),
        ),
        (
            "--save-policies",
            config.save_policies and not online,
            "policies are saved at online evaluations, and this run has none",
        ),
        (
            "--holdout-episodes",
            config.holdout_episodes != default.holdout_episodes and not data,
            "it holds episodes out of a dataset, and this run has none",
        ),
    ):
        if pointless:
            console.print(f"[yellow]{flag} has no effect: {why}")
    for field in ("normalize_observations", "reward_scale_by_return_range"):
        if getattr(needs["online"], field) and not data:
            flag = "--agent." + field.replace("_", "-")
            console.print(
                f"[yellow]{flag} has no effect: it is fitted to a dataset, and this run has none"
            )
    start = config.agent.start_steps
    if online and needs["online"].loop == "off_policy" and start >= config.online_steps:
        console.print(
            f"[yellow]--online-steps {config.online_steps} is within {config.algo}'s warm-up "
            f"(--agent.start-steps {start}): the online phase makes no updates"
        )


def switch(agent: Any, config: TrainConfig) -> Any:
    """The agent as the online phase starts: its own rule (`on_switch`), then the generic hooks
    (`freeze`, `reset_optimizers`). Training and every restore of a switched agent (a
    checkpoint's template) go through here, so they cannot disagree."""
    return switch_parts(agent.on_switch(config.agent), config.freeze, config.reset_optimizers)


def dataset_buffers(
    dataset: Dataset, task: Task, discount: float, needs: dict[str, Needs]
) -> dict[str, ReplayBuffer]:
    """Per phase, the dataset's transitions on the device as that phase's batches need them:
    rewards and observations in the task's learning units, plus the batch fields the agent
    declares (`Needs`); phases that need the same fields share one buffer."""
    made: dict[tuple, ReplayBuffer] = {}
    buffers = {}
    for phase, need in needs.items():
        key = (need.batch_fields, need.horizon > 1)
        if key not in made:
            transitions = dataset.transitions()
            transitions["rewards"] = task.reward_transform(transitions["rewards"])
            if task.observation_normalizer is not None:
                for name in ("observations", "next_observations"):
                    transitions[name] = task.observation_normalizer(transitions[name])
            if "mc_returns" in need.batch_fields:  # of the transformed rewards
                transitions["mc_returns"] = discounted_returns(
                    transitions["rewards"], dataset.episode_ends, discount, task.failure_reward
                )
            if "next_actions" in need.batch_fields:
                transitions["next_actions"] = dataset.next_actions()
            if need.horizon > 1:  # windows of steps stop at episode ends (QC: trajectory ends)
                ends = (
                    dataset.recording_ends
                    if task.terminals_inside_recordings
                    else dataset.episode_ends
                )
                transitions["ends"] = ends.astype(np.float32)
            made[key] = ReplayBuffer.from_arrays(transitions)
        buffers[phase] = made[key]
    return buffers


def _print_preset(config: TrainConfig) -> None:
    """Say which recipe the run uses, and warn when it is not the one for its task."""
    expected, _ = task_preset(config.algo, config.task)
    if config.preset is None:
        console.print(
            f"{config.algo}: no preset recorded (an agent config given by hand, or a run made "
            "before presets existed)"
        )
    elif config.preset != expected:
        console.print(
            f"[yellow]{config.algo}: the '{config.preset}' recipe, though '{expected}' is the "
            f"one for {config.task}"
        )
    elif _lacks_family_preset(config):
        family = parse_task(config.task)[0].family
        console.print(
            f"[yellow]{config.algo}: no '{family}' recipe yet; the default '{config.preset}' "
            f"recipe for {config.task}"
        )
    else:
        console.print(f"{config.algo}: the '{config.preset}' recipe for {config.task}")


def _lacks_family_preset(config: TrainConfig) -> bool:
    """Whether the agent has recipes per task family, but none for this task's."""
    presets = get_agent(config.algo).presets
    families = {task.family for task in TASKS.values()}
    return parse_task(config.task)[0].family not in presets and bool(families & set(presets))


def run_task(run_dir: Path) -> Task:
    """The task as a run's agent saw it: the registry's, with the reward transform and the
    observation normaliser the run learned under (to convert its data back to env units)."""
    task = get_task(load_config(run_dir).task)
    path = Path(run_dir) / TRANSFORMS_FILE
    if not path.exists():
        return task
    saved = read_json(path)
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


def run_split(config: TrainConfig, dataset: Dataset) -> tuple[Dataset, Dataset]:
    """(training episodes, held-out episodes) of `dataset` as the run split it
    (`hold_out_episodes`); when it held none out, a tenth of the episodes (at least one), so
    that the checks after training always have episodes the agent did not learn from."""
    tenth = len(dataset.episodes()) // 10
    return dataset.hold_out(min(config.holdout_episodes, tenth) or max(tenth, 1))


def learning_task(task: Task, dataset: Dataset | None, needs: Needs) -> Task:
    """The task as the agent learns it, from the transforms it needs:
    - `normalize_observations` (TD3+BC's recipe): states standardised by the dataset's mean
      and std, offline and, through `Task.make_env`, online and in evaluation;
    - `reward_scale_by_return_range` (IQL's locomotion recipe): the registry's reward transform
      followed by a scale that makes the dataset's episode returns span 1000;
    - `reward_scale` (Cal-QL's on OGBench manipulation): one more constant factor.
    Online rewards and Q-bias use the same transforms. Without a dataset (online from scratch)
    only the constant factor applies: the other two are fitted to the data."""
    if dataset is None:
        needs = dataclasses.replace(
            needs, normalize_observations=False, reward_scale_by_return_range=False
        )
    if needs.normalize_observations:
        normalizer = ObservationNormalizer.fit(dataset.observations)
        task = dataclasses.replace(task, observation_normalizer=normalizer)
    if needs.reward_scale_by_return_range:
        returns = dataset.episode_returns(task.reward_transform(dataset.rewards))
        span = float(returns.max() - returns.min())
        if span <= 0:
            raise ValueError(
                f"{dataset.source}: every episode has the same return, so rewards cannot be "
                "scaled by the return range; pass --agent.no-reward-scale-by-return-range"
            )
        console.print(f"rewards scaled by 1000 / {span:.1f} (episode return range of the dataset)")
        task = dataclasses.replace(task, reward_transform=task.reward_transform.scaled(1000 / span))
    if needs.reward_scale != 1.0:
        console.print(f"rewards scaled by {needs.reward_scale:g} (the agent's reward_scale)")
        task = dataclasses.replace(
            task, reward_transform=task.reward_transform.scaled(needs.reward_scale)
        )
    return task


def trained_agent(run_dir: Path, phase: Phase | None = None) -> tuple[Any, Phase, dict]:
    """A run's agent as its latest checkpoint of `phase` holds it (by default the online
    phase's when there is one, else the offline phase's), the phase, and the checkpoint's
    progress counters. Its task as it learned: `run_task`."""
    config = load_config(run_dir)
    obs_space, act_space = get_task(config.task).spaces()
    agent = get_agent(config.algo).agent_cls.create(config.agent, obs_space, act_space, 0)
    found = {
        "offline": find_checkpoint(checkpoint_dir(run_dir)),
        "online": find_checkpoint(online_checkpoint_dir(run_dir)),
    }
    phase = phase or ("online" if found["online"] is not None else "offline")
    if found[phase] is None:
        have = [name for name, path in found.items() if path is not None]
        raise FileNotFoundError(
            f"{run_dir}: no whole {phase} checkpoint"
            + (f"; it has an {have[0]} one (--phase {have[0]})" if have else "; train it first")
        )
    if phase == "online" and config.offline_steps > 0:  # it holds the switched agent
        agent = switch(agent, config)
    agent, progress = load_checkpoint(found[phase], agent, leading=True)
    return agent, phase, progress


def replay_transitions(run_dir: Path) -> dict[str, np.ndarray]:
    """The online replay buffer of a run's latest checkpoint, in insertion order (rewards and
    observations as the agent saw them, after the run's transforms: `run_task`)."""
    config = load_config(run_dir)
    spec = get_agent(config.algo)
    env = get_task(config.task).make_env()
    agent = spec.agent_cls.create(config.agent, env.observation_space, env.action_space, 0)
    needs = agent.needs("online")
    if needs.loop == "on_policy":
        raise ValueError(
            f"{run_dir}: {config.algo} is on-policy; it keeps no replay buffer to export"
        )
    if config.offline_steps > 0:  # the checkpoint holds the switched agent (frozen parts...)
        agent = switch(agent, config)
    checkpoint = find_checkpoint(online_checkpoint_dir(run_dir))
    if checkpoint is None:
        raise FileNotFoundError(
            f"{online_checkpoint_dir(run_dir)}: no whole online checkpoint; only a run with an "
            "online phase keeps a replay buffer"
        )
    capacity = json.loads((checkpoint / "progress.json").read_text())["buffer_capacity"]
    template = (agent, ReplayBuffer.create(example_transition(env, needs), capacity))
    (_, buffer, _), _ = load_checkpoint(checkpoint, (*template, jax.random.key(0)))
    if int(buffer.size) == buffer.capacity and int(buffer.cursor) != 0:
        raise ValueError(f"{run_dir}: the replay buffer wrapped around; its order is lost")
    return {k: np.asarray(v[: int(buffer.size)]) for k, v in buffer.data.items()}


def _write_summary(run_dir: Path, config: TrainConfig, phases: dict[str, Any]) -> None:
    """summary.json: per phase, the final and best evaluation, updates and time; with an online
    phase, the fine-tuning metrics (`o2o.diagnostics.finetune`: dip, recovery, regret)."""
    summary: dict[str, Any] = {"algo": config.algo, "task": config.task, "seed": config.seed}
    summary["device"] = device_kind()  # where it finished (each record names its own)
    for name, progress in phases.items():
        evals = progress.evaluations
        best = max(evals, key=lambda e: np.nan_to_num(e["normalized_score"], nan=-np.inf))
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
            summary |= finetune_metrics(read_metrics(run_dir), read_episodes(run_dir))
    write_json(run_dir / "summary.json", summary)  # NaN: null
    last = "" if "online" in phases else "offline_"
    console.print(
        f"final return {summary[last + 'final_return']:.1f} "
        f"(score {summary[last + 'final_score']:.1f}), best score "
        f"{summary[last + 'best_score']:.1f}; "
        f"run directory: {run_dir}"
    )
