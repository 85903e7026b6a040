"""The `o2o` command: `o2o train`, `o2o demo`, `o2o dataset make|info|convert|from-run`,
`o2o report`, `o2o sweep`, `o2o export`, `o2o fqe`, `o2o switch-check`.

`o2o train --algo NAME --task TASK ...` reads the algorithm, the task and `--preset` first, so
that every other flag (including `--agent.*` hyperparameters) shows and defaults to that
algorithm's reference recipe for that task (its preset: `o2o.train.pipeline.task_preset`).
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import tyro

from o2o.agents import AGENTS
from o2o.checkpoint import RunDirectoryInUse, find_checkpoint
from o2o.data.formats import FORMATS, SAVERS, load_dataset, save_dataset
from o2o.data.generate import dataset_from_replay, make_dataset
from o2o.diagnostics.fqe import (
    FQE_FILE,
    FQEConfig,
    agent_policy,
    fitted_q_evaluation,
    start_state_q,
)
from o2o.diagnostics.switch import SWITCH_FILE, action_distance
from o2o.diagnostics.switch import checks as switch_checks
from o2o.diagnostics.switch import risk as switch_risk
from o2o.envs.tasks import DEFAULT_TASK, TASKS, get_task, parse_task
from o2o.logging import console, read_metrics, write_json
from o2o.report.report import fine_tuning_table, render_report
from o2o.report.tables import dataset_row, print_dataset_table, print_table
from o2o.sweep import sweep as run_sweep
from o2o.train.offline import checkpoint_dir as offline_checkpoint_dir
from o2o.train.pipeline import (
    config_type,
    default_config,
    load_config,
    replay_transitions,
    run_dataset,
    run_split,
    run_task,
    seed_configs,
    train,
    train_together,
    trained_agent,
)
from o2o.zoo import expert_note

DEMO_DESCRIPTION = (
    "the switch from offline to online on the default task's dataset: the pre-trained TD3+BC, "
    "CQL and Cal-QL runs shipped with o2o fine-tuned, RLPD from scratch, and a report (score, "
    "Q bias, the dip); prints its path"
)
USAGE = f"""usage: o2o COMMAND [FLAGS]

commands:
  train   train an agent: o2o train --algo NAME --task TASK[-LEVEL] --offline-steps N
          --online-steps M --seed S --out DIR
  demo    {DEMO_DESCRIPTION}
  dataset make TASK-LEVEL | info PATH|TASK-LEVEL... | convert SRC DST | from-run RUN DST
  report  RUN_DIR... [--out DIR]: score and Q-bias plots and the fine-tuning (dip) table, as
          self-contained HTML and Markdown
  sweep   SPEC.toml [--workers N | --ray-address auto]: a study of tasks x algos x seeds, with
          its table and report
  export  RUN_DIR [--out policy.onnx]: the trained policy as an ONNX graph (raw observation
          in, action in the environment's units out), checked with onnxruntime
  fqe     RUN_DIR [--dataset D]: the policy's value estimated from data alone (fitted Q
          evaluation), beside the data's own
  switch-check RUN_DIR: before fine-tuning, the risk that the policy unlearns at the switch,
          and why

`o2o COMMAND --help` lists a command's flags; --debug shows an error's traceback."""

# The demo's budget: minutes on 2 CPU cores. Reference recipes, except narrower networks,
# fewer steps and RLPD's warm-up (5,000 random steps in the recipe). It fine-tunes the offline
# runs shipped in DEMO_PRETRAINED (their commands and results: its README.md); --pretrain
# trains them here instead, for DEMO_OFFLINE_STEPS.
DEMO_PRETRAINED = Path(__file__).resolve().parent.parent / "assets" / "demo" / "hopper-medium"
DEMO_DATASET_SIZE = 100_000
DEMO_OFFLINE_STEPS = 1500
DEMO_ONLINE_STEPS = 2000
DEMO_HIDDEN = (128, 128)
DEMO_RLPD_START_STEPS = 500
DEMO_FOUND = (  # benchmarks/results/finetune_switch.md, the full-size version of this demo
    "At 256x256, 20k offline updates and 10k online steps, 2 seeds "
    "(benchmarks/results/finetune_switch.md): TD3+BC unlearned at the switch (89 -> 31, a dip "
    "of 50 points within 1,000 steps, never recovered); CQL did not dip (17 -> 89); Cal-QL "
    "had fallen over offline (3) and climbed to 22."
)


def at_least(low: int):
    """An argparse type: an integer no smaller than `low` (refused at parse time, exit 2)."""

    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"{value}: give at least {low}")
        return value

    parse.__name__ = "integer"  # argparse names the type in its message
    return parse


def train_command(argv: list[str]) -> Path:
    pre = argparse.ArgumentParser(prog="o2o train", add_help=False, allow_abbrev=False)
    pre.add_argument("--algo", default="sac")
    pre.add_argument("--task", default=DEFAULT_TASK)
    pre.add_argument("--preset", default=None)
    pre.add_argument("--seeds", type=at_least(0), nargs="+", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.seeds is not None:  # tyro parses the rest; --seeds is not a TrainConfig field
        start = next(i for i, a in enumerate(argv) if a.split("=")[0] == "--seeds")
        end = start + 1 + (0 if "=" in argv[start] else len(known.seeds))
        if any(a.split("=")[0] == "--seed" for a in argv):
            raise ValueError("give --seed S or --seeds S1 S2 ..., not both")
        argv = argv[:start] + argv[end:]
    if known.algo not in AGENTS:
        raise ValueError(f"unknown algorithm '{known.algo}'; choose one of: {', '.join(AGENTS)}")
    default = default_config(known.algo, task=known.task, preset=known.preset)
    description = (
        "Train an agent. The agent's defaults are its reference recipe for the task (printed "
        "at the start, recorded as `preset` in config.json); --preset NAME takes another of "
        "its recipes. Algorithms: "
        + "; ".join(
            f"{name}: {spec.summary} (presets: {', '.join(spec.presets)})"
            for name, spec in AGENTS.items()
        )
        + ". --seeds S1 S2 ... trains one run per seed in one process, the updates of all "
        "seeds in one vmapped call (online: their environments stepped together, except "
        "Cal-QL's and FPO's); with --out DIR the runs go to DIR/seedS."
    )
    config = tyro.cli(
        config_type(known.algo),
        default=default,
        args=argv,
        prog="o2o train",
        description=description,
    )
    if known.seeds is None:
        return train(config)
    return train_together(seed_configs(config, known.seeds))[-1]


def demo_command(argv: list[str]) -> Path:
    parser = argparse.ArgumentParser(prog="o2o demo", description=DEMO_DESCRIPTION)
    parser.add_argument("--out", type=Path, default=None, help="default: runs/demo-TIMESTAMP")
    parser.add_argument("--online-steps", type=at_least(1), default=DEMO_ONLINE_STEPS)
    parser.add_argument("--rlpd-start-steps", type=at_least(0), default=DEMO_RLPD_START_STEPS)
    parser.add_argument(
        "--eval-interval",
        type=at_least(1),
        default=250,
        help="evaluations every N online steps (with --pretrain, offline updates too)",
    )
    parser.add_argument(
        "--pretrained",
        type=Path,
        default=DEMO_PRETRAINED,
        help="fine-tune the offline runs DIR/ALGO (each made by `o2o train --algo ALGO ... "
        "--online-steps 0 --out DIR/ALGO`): their configuration (task, data, networks, "
        "seed) is kept, and RLPD runs on the same data with the smallest of their networks "
        "(default: the runs shipped with o2o, hopper-medium; their commands and results are "
        "in its README.md)",
    )
    pretrain = parser.add_argument_group(
        "--pretrain: pre-train CQL and Cal-QL here instead (at this budget they score a few "
        "points at the switch, so no dip can show)"
    )
    pretrain.add_argument("--pretrain", action="store_true")
    pretrain.add_argument("--task", default=f"{DEFAULT_TASK}-medium", help="dataset TASK-LEVEL")
    pretrain.add_argument("--dataset-size", type=at_least(1), default=DEMO_DATASET_SIZE)
    pretrain.add_argument("--offline-steps", type=at_least(0), default=DEMO_OFFLINE_STEPS)
    pretrain.add_argument("--hidden", type=at_least(1), nargs="+", default=list(DEMO_HIDDEN))
    pretrain.add_argument("--eval-episodes", type=at_least(1), default=5)
    pretrain.add_argument("--seed", type=at_least(0), default=0)
    args = parser.parse_args(argv)
    out = args.out or Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    if args.pretrain:
        base = default_config(
            "cql",
            task=args.task,
            dataset_size=args.dataset_size,
            offline_steps=args.offline_steps,
            seed=args.seed,
            eval_interval=args.eval_interval,
            eval_episodes=args.eval_episodes,
        )
        hidden, pretrained = tuple(args.hidden), {}
        plan = {  # algo -> (offline steps, agent overrides)
            algo: (base.offline_steps, {"hidden_dims": hidden}) for algo in ("cql", "calql")
        }
        origin = f"CQL and Cal-QL, {base.offline_steps} offline updates"
    else:
        pretrained = _pretrained_runs(args.pretrained)
        configs = {algo: load_config(run) for algo, run in pretrained.items()}
        base = min(configs.values(), key=lambda c: sum(c.agent.hidden_dims))
        hidden, plan = tuple(base.agent.hidden_dims), {algo: (0, {}) for algo in pretrained}
        origin = ", ".join(
            f"{algo} pre-trained for {c.offline_steps} offline updates "
            f"({'x'.join(map(str, c.agent.hidden_dims))})"
            for algo, c in configs.items()
        )
    plan["rlpd"] = (0, {"hidden_dims": hidden, "start_steps": args.rlpd_start_steps})
    console.print(
        f"o2o demo on {base.task}: {origin}, then {args.online_steps} online steps; RLPD "
        f"({'x'.join(map(str, hidden))}), {args.online_steps} online steps from scratch with "
        f"the data mixed in. Outputs in {out}"
    )
    run_dirs = []
    for algo, (offline_steps, overrides) in plan.items():
        console.rule(algo)
        if algo in pretrained:
            if not (out / algo).exists():  # a demo run again resumes its own copy
                shutil.copytree(pretrained[algo], out / algo)
            config = dataclasses.replace(
                load_config(out / algo), out=out / algo, eval_interval=args.eval_interval
            )
        else:
            config = default_config(
                algo,
                task=base.task,
                dataset_size=base.dataset_size,
                offline_steps=offline_steps,
                seed=base.seed,
                eval_interval=args.eval_interval,
                eval_episodes=base.eval_episodes,
                out=out / algo,
            )
            config = dataclasses.replace(
                config, agent=dataclasses.replace(config.agent, **overrides)
            )
        run_dirs.append(train(dataclasses.replace(config, online_steps=args.online_steps)))
    path = render_report(run_dirs, out / "report", title=f"o2o demo: {base.task}")
    console.print(fine_tuning_table(run_dirs))
    for run_dir in run_dirs:
        console.print(_online_story(run_dir))
    if base.task == f"{DEFAULT_TASK}-medium":
        console.print(DEMO_FOUND)
    console.print(f"report: {path} (Markdown: {path.with_suffix('.md')})")
    print(path)
    return path


def _online_story(run_dir: Path) -> str:
    """One line on what a run's score did online: from the switch to its lowest and its last
    evaluation (the table's dip looks at the first quarter of the online steps only)."""
    online = [r for r in read_metrics(run_dir) if r["phase"] == "online"]
    start, last = online[0], online[-1]
    low = min(online, key=lambda r: r["normalized_score"])
    fell = (
        f"lowest {low['normalized_score']:.1f} after {low['env_steps']:,} online steps"
        if low["normalized_score"] < start["normalized_score"]
        else "never below it"
    )
    return (
        f"{load_config(run_dir).algo}: {start['normalized_score']:.1f} at the switch, {fell}, "
        f"{last['normalized_score']:.1f} after {last['env_steps']:,}"
    )


def _pretrained_runs(root: Path) -> dict[str, Path]:
    """The offline runs `root/ALGO` the demo can fine-tune, by algorithm, or a ValueError
    saying why one cannot be."""
    if not root.is_dir():
        raise ValueError(f"--pretrained {root}: no such folder")
    runs = {}
    for run in sorted(p for p in root.iterdir() if p.is_dir()):
        config = load_config(run)  # names the directory if it is not a run
        if config.algo != run.name or config.online_steps != 0 or config.offline_steps == 0:
            raise ValueError(
                f"{run}: --pretrained needs offline runs DIR/ALGO (--algo ALGO --offline-steps "
                f"N --online-steps 0); it holds a {config.algo} run of {config.offline_steps} "
                f"offline and {config.online_steps} online steps"
            )
        if find_checkpoint(offline_checkpoint_dir(run)) is None:
            raise ValueError(f"{run}: no offline checkpoint; train it to the end first")
        runs[config.algo] = run
    if not runs:
        raise ValueError(f"--pretrained {root}: no offline runs in it (DIR/ALGO)")
    return runs


def dataset_command(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="o2o dataset", description="Make, inspect, convert.")
    sub = parser.add_subparsers(dest="action", required=True)
    make = sub.add_parser("make", help="generate TASK-LEVEL (cached; levels per task below)")
    make.add_argument("name", help="e.g. hopper-medium; " + _levels_help())
    make.add_argument(
        "--size", type=at_least(1), default=None, help="transitions (default: D4RL's)"
    )
    make.add_argument("--seed", type=at_least(0), default=0)
    make.add_argument(
        "--workers",
        type=at_least(1),
        default=None,
        help="processes collecting (the same data for any number; default: one per core)",
    )
    make.add_argument("--out", type=Path, default=None, help="also write it here (see convert)")
    info = sub.add_parser("info", help="size, episodes, returns, normalised score")
    info.add_argument("datasets", nargs="+", help="dataset files/folders or TASK-LEVEL names")
    info.add_argument("--task", default=None, help="task for scores, if a file does not say")
    info.add_argument(
        "--size", type=at_least(1), default=None, help="for TASK-LEVEL names (see make)"
    )
    info.add_argument("--seed", type=at_least(0), default=0, help="for TASK-LEVEL names")
    info.add_argument("--markdown", type=Path, default=None, help="also write a Markdown table")
    info.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    _add_robomimic_flags(info)
    convert = sub.add_parser("convert", help="rewrite a dataset in another format")
    convert.add_argument("src", type=Path)
    convert.add_argument("dst", type=Path)
    convert.add_argument("--to", choices=SAVERS, default=None, help="default: from dst suffix")
    convert.add_argument("--from", dest="src_format", choices=FORMATS, default=None)
    _add_robomimic_flags(convert)
    convert.add_argument(
        "--task",
        default=None,
        help="check it against this task, as train does (default: the "
        "task its metadata names, if any)",
    )
    from_run = sub.add_parser("from-run", help="a training run's replay buffer as a dataset")
    from_run.add_argument("run", type=Path, help="run directory (with checkpoints/latest)")
    from_run.add_argument("dst", type=Path)
    from_run.add_argument("--to", choices=SAVERS, default=None, help="default: from dst suffix")
    args = parser.parse_args(argv)
    if args.action == "make":
        dataset, path = make_dataset(args.name, args.size, args.seed, args.workers)
        rows = [dataset_row(args.name, dataset, get_task(args.name))]
        if args.out is not None:
            meta = {"name": args.name, "task": get_task(args.name).name, "seed": args.seed}
            path = save_dataset(dataset, args.out, meta=meta)
        print_dataset_table(rows)
        _print_collection_stats(args.name, args.size, args.seed)
        _print_expert_note(args.name)
        print(path)
    elif args.action == "info":
        rows = [_info_row(spec, args) for spec in args.datasets]
        command = "o2o dataset " + " ".join(argv)
        print_dataset_table(rows, args.markdown, args.json, command)
        for spec in args.datasets:
            if not Path(spec).exists():
                _print_collection_stats(spec, args.size, args.seed)
                _print_expert_note(spec)
    elif args.action == "from-run":
        config = load_config(args.run)
        task = get_task(config.task)
        replay = replay_transitions(args.run)
        seen = run_task(args.run)  # back to the environment's units
        replay["rewards"] = seen.reward_transform.inverse(replay["rewards"])
        if seen.observation_normalizer is not None:
            for key in ("observations", "next_observations"):
                replay[key] = seen.observation_normalizer.inverse(replay[key])
        dataset = dataset_from_replay(replay, f"replay buffer of {args.run}")
        meta = {"task": task.name, "run": str(args.run), "algo": config.algo}
        path = save_dataset(dataset, args.dst, format=args.to, meta=meta)
        print_dataset_table([dataset_row(str(path), dataset, task)])
    else:
        dataset, meta, task = _read_for_task(args.src, args.task, args.src_format, _robomimic(args))
        if task is not None:
            meta = meta | {"task": task.name}
        path = save_dataset(dataset, args.dst, format=args.to, meta=meta)
        console.print(f"{args.src} -> {path}: {len(dataset)} transitions")


def report_command(argv: list[str]) -> Path:
    parser = argparse.ArgumentParser(
        prog="o2o report", description="Render the report (HTML + Markdown) for a set of runs."
    )
    parser.add_argument("runs", nargs="+", type=Path, help="run directories")
    parser.add_argument("--out", type=Path, default=None, help="default: RUN_DIR/report")
    parser.add_argument("--title", default="o2o report")
    args = parser.parse_args(argv)
    out = args.out or (args.runs[0] / "report" if len(args.runs) == 1 else Path("report"))
    path = render_report(args.runs, out, args.title)
    console.print(f"report: {path} (Markdown: {path.with_suffix('.md')})")
    print(path)
    return path


def sweep_command(argv: list[str]) -> Path | None:
    parser = argparse.ArgumentParser(
        prog="o2o sweep",
        description="Run a study from a sweep file (tasks x algos x seeds, a budget, "
        "overrides: see o2o/sweep.py and examples/): finished runs are skipped, unfinished ones "
        "resumed, a failed one retried once and reported; ends with the table and the report.",
    )
    parser.add_argument("spec", type=Path, help="sweep file (TOML)")
    parser.add_argument(
        "--workers",
        type=at_least(1),
        default=None,
        help="processes on this machine (default: cores/2)",
    )
    parser.add_argument(
        "--ray-address",
        default=None,
        help="run on Ray: 'auto' (the cluster this machine is in), 'local' (a new local "
        "instance) or the head's address",
    )
    parser.add_argument("--cpus-per-run", type=float, default=1.0, help="Ray resources per run")
    args = parser.parse_args(argv)
    if not args.cpus_per_run > 0:
        raise ValueError(f"--cpus-per-run {args.cpus_per_run}: give a positive number")
    report, failures = run_sweep(args.spec, args.workers, args.ray_address, args.cpus_per_run)
    if failures:
        raise SystemExit(f"o2o sweep: {len(failures)} unit(s) failed twice (listed above)")
    return report


def _print_collection_stats(name: str, size: int | None, seed: int) -> None:
    task, level = parse_task(name)
    stats = task.collection_stats(level, size, seed)
    if stats:
        console.print(
            f"{name}: {stats['episodes']} collection episodes of "
            f"{stats['rows'] // stats['episodes']} steps; subtasks finished per episode "
            f"{stats['completions_mean']:.1f} (min {stats['completions_min']}, max "
            f"{stats['completions_max']}); action mean {_numbers(stats['action_mean'])}, std "
            f"{_numbers(stats['action_std'])}"
        )


def _print_expert_note(name: str) -> None:
    task, level = parse_task(name)
    note = expert_note(task.name, level) if level else None
    if note:
        console.print(f"[yellow]note:[/yellow] {note}")


def _numbers(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.3f}" for v in values) + "]"


def _levels_help() -> str:
    return "; ".join(f"{name}: {', '.join(task.levels)}" for name, task in TASKS.items())


def _read_for_task(
    path: Path, task_name: str | None, format: str | None = None, options: dict | None = None
):
    """(dataset, meta, task): the file read and checked as `o2o train` checks it
    (`Task.check_dataset`) against `task_name` or the task its metadata names; with neither,
    the format's own checks only (task None). `options`: the robomimic reader's."""
    dataset, meta = load_dataset(path, format=format, options=options)
    task_name = task_name or meta.get("task")
    if task_name is None:
        return dataset, meta, None
    task = get_task(task_name)
    return task.check_dataset(dataset), meta, task


def _add_robomimic_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--obs-keys",
        nargs="+",
        default=None,
        help="robomimic: observation keys, in order (default: all, sorted)",
    )
    parser.add_argument(
        "--split",
        default=None,
        help="robomimic: the demos of this mask/ filter (default: train, where the file has one)",
    )


def _robomimic(args: argparse.Namespace) -> dict:
    return {"obs_keys": args.obs_keys, "split": args.split}


def _info_row(spec: str, args: argparse.Namespace) -> dict:
    if not Path(spec).exists() and (Path(spec).suffix or "/" in spec):
        raise FileNotFoundError(f"{spec}: no such dataset file or folder")
    if Path(spec).exists():
        dataset, _, task = _read_for_task(Path(spec), args.task, options=_robomimic(args))
        return dataset_row(spec, dataset, task)
    dataset, _ = make_dataset(spec, args.size, args.seed)
    return dataset_row(spec, dataset, get_task(spec))


def fqe_command(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(
        prog="o2o fqe",
        description="Estimate a run's policy value from data alone by fitted Q evaluation "
        "(o2o/diagnostics/fqe.py): the discounted return expected from the dataset's start "
        "states, beside the data's own; written to RUN_DIR/fqe.json.",
    )
    parser.add_argument("run", type=Path, help="run directory")
    parser.add_argument(
        "--dataset",
        default=None,
        help="a dataset file or TASK-LEVEL (default: the data the run trained on)",
    )
    parser.add_argument("--phase", choices=("offline", "online"), default=None)
    parser.add_argument("--steps", type=at_least(1), default=FQEConfig.steps, help="at most")
    parser.add_argument("--min-steps", type=at_least(0), default=FQEConfig.min_steps)
    parser.add_argument("--seed", type=at_least(0), default=0)
    args = parser.parse_args(argv)
    config = load_config(args.run)
    agent, phase, progress = trained_agent(args.run, args.phase)
    task = run_task(args.run)
    if args.dataset is None:
        dataset = run_dataset(config)
        if dataset is None:
            raise ValueError(f"{args.run}: trained without a dataset; give one with --dataset")
    elif Path(args.dataset).exists():
        dataset = _read_for_task(Path(args.dataset), config.task)[0]
    else:
        dataset = make_dataset(args.dataset, None)[0]
    fqe = FQEConfig(
        discount=config.agent.discount,
        steps=args.steps,
        min_steps=min(args.min_steps, args.steps),
        eval_interval=min(FQEConfig.eval_interval, args.steps),
    )
    policy = agent_policy(agent, task.observation_normalizer, args.seed)
    beyond = fqe.discount**task.max_episode_steps
    if beyond > 0.01:
        console.print(
            f"[yellow]FQE's value is infinite-horizon and episodes end at {task.max_episode_steps}"
            f" steps: at discount {fqe.discount}, {beyond:.0%} of a constant reward's value lies"
            " beyond the limit, which a measured return never sees"
        )
    inside = task.terminals_inside_recordings
    result = fitted_q_evaluation(policy, dataset, fqe, args.seed, inside)
    result |= {"phase": phase, "progress": progress, "dataset": dataset.source}
    path = args.run / FQE_FILE
    write_json(path, result)
    console.print(
        f"FQE of {config.algo} ({phase} checkpoint): value {result['value']:.1f} (discounted "
        f"return, discount {fqe.discount}, mean over {result['start_states']} start states), "
        f"the data's own {result['behaviour_value']:.1f}; kept at update {result['step']} "
        f"(held-out TD error {result['holdout_td']:.3g})"
    )
    print(path)
    return result


def switch_check_command(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(
        prog="o2o switch-check",
        description="Before fine-tuning: how likely a run's pre-trained policy is to unlearn at "
        "the switch (the dip), from Q's bias on held-out data and on its own episodes, its "
        "value against fitted Q evaluation, and how far its actions lie from the data "
        "(o2o/diagnostics/switch.py). Writes RUN_DIR/switch_check.json.",
    )
    parser.add_argument("run", type=Path, help="run directory with an offline phase")
    parser.add_argument("--fqe-steps", type=at_least(0), default=FQEConfig.steps)
    parser.add_argument("--seed", type=at_least(0), default=0)
    args = parser.parse_args(argv)
    config = load_config(args.run)
    agent, _, progress = trained_agent(args.run, "offline")
    task = run_task(args.run)
    records = [r for r in read_metrics(args.run) if r.get("phase") == "offline"]
    dataset = run_dataset(config)
    if dataset is None or not records:
        raise ValueError(f"{args.run}: no offline phase to check (trained without a dataset)")
    train_data, held = run_split(config, dataset)
    q_start = fqe_value = distance = None
    if agent.needs("offline").horizon == 1:
        policy = agent_policy(agent, task.observation_normalizer, args.seed)
        distance = action_distance(policy, train_data, held, args.seed)
        if args.fqe_steps:
            learning = dataclasses.replace(dataset, rewards=task.reward_transform(dataset.rewards))
            fqe = FQEConfig(
                discount=config.agent.discount,
                steps=args.fqe_steps,
                min_steps=min(FQEConfig.min_steps, args.fqe_steps),
                eval_interval=min(FQEConfig.eval_interval, args.fqe_steps),
            )
            inside = task.terminals_inside_recordings
            fqe_value = fitted_q_evaluation(policy, learning, fqe, args.seed, inside)["value"]
            q_start = start_state_q(agent, task.observation_normalizer, dataset, policy, inside)
    found = switch_checks(records[-1], q_start, fqe_value, distance)
    level, reason = switch_risk(found)
    table = [
        {"check": c.name, "value": "-" if c.value is None else f"{c.value:+.2f}", "note": c.note}
        for c in found
    ]
    print_table(table, {"check": "check", "value": "value", "note": "what it says"})
    console.print(f"risk of a dip at the switch: [bold]{level}[/bold] ({reason})")
    result = {
        "risk": level,
        "reason": reason,
        "checks": [dataclasses.asdict(c) for c in found],
        "q_start": q_start,
        "fqe": fqe_value,
        "offline_updates": progress.get("updates"),
    }
    write_json(args.run / SWITCH_FILE, result)
    print(args.run / SWITCH_FILE)
    return result


# Observations the exported policy is checked on: a random-action episode's, from these resets.
EXPORT_CHECK_STEPS = 200


def export_command(argv: list[str]) -> Path:
    parser = argparse.ArgumentParser(
        prog="o2o export",
        description="Write a run's trained policy as an ONNX graph: raw observation in, action "
        "in the environment's units out (the run's observation normalisation folded in); flow "
        "agents take their noise as inputs (see o2o/export.py). Checked against o2o's own "
        "actions with onnxruntime. Needs the 'export' extra.",
    )
    parser.add_argument("run", type=Path, help="run directory")
    parser.add_argument("--out", type=Path, default=None, help="default: RUN_DIR/policy.onnx")
    parser.add_argument(
        "--phase",
        choices=("offline", "online"),
        default=None,
        help="whose checkpoint (default: the online phase's if the run has one)",
    )
    args = parser.parse_args(argv)
    from o2o import export  # its converter is an optional extra

    config = load_config(args.run)
    agent, phase, progress = trained_agent(args.run, args.phase)
    task = run_task(args.run)
    io = export.PolicyIO.of(task)
    metadata = {
        "algo": config.algo,
        "task": config.task,
        "run": str(args.run),
        "phase": phase,
        "progress": {k: v for k, v in progress.items() if isinstance(v, int)},
        "action_dim": len(io.action_low),
        "horizon": int(agent.needs(phase).horizon),
    }
    out = export.export_onnx(agent, io, args.out or args.run / "policy.onnx", metadata)
    policy = export.OnnxPolicy(out)
    observations = _observations_to_check(task)
    difference = export.max_difference(agent, io, policy, observations)
    inputs = ", ".join(policy.input_names)
    console.print(
        f"{out}: {config.algo} ({phase} checkpoint), inputs {inputs}; onnxruntime's actions "
        f"differ from o2o's by at most {difference:.2g} on {len(observations)} observations"
    )
    if not difference <= 1e-4:
        raise ValueError(
            f"{out}: the exported policy's actions differ from o2o's by {difference:.3g} "
            "(more than 1e-4); please report this with the run's config.json"
        )
    print(out)
    return out


def _observations_to_check(task) -> np.ndarray:
    """Raw observations of one random-action episode (resets as needed), seeded."""
    env, rng = task.base_env(), np.random.default_rng(0)
    obs, seen = env.reset(seed=0)[0], []
    env.action_space.seed(0)
    for _ in range(EXPORT_CHECK_STEPS):
        seen.append(obs)
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            obs = env.reset(seed=int(rng.integers(2**31)))[0]
    env.close()
    return np.asarray(seen, np.float32)


COMMANDS = {
    "train": train_command,
    "demo": demo_command,
    "dataset": dataset_command,
    "report": report_command,
    "sweep": sweep_command,
    "export": export_command,
    "fqe": fqe_command,
    "switch-check": switch_check_command,
}


# What a user can fix (a file, a flag, a directory, the disk): one line and exit status 2.
# Anything else is a bug in o2o and keeps its traceback.
USER_ERRORS = (ValueError, OSError, RunDirectoryInUse, ImportError)  # ImportError: an extra
_OS_FIXES = {
    errno.ENOSPC: "the disk is full: free space, or give --out on another disk (a run resumes "
    "from its last checkpoint)",
    errno.EACCES: "not allowed: give a path you can write to",
    errno.EPERM: "not allowed: give a path you can write to",
    errno.EROFS: "a read-only file system: give a path you can write to",
    errno.ENOTDIR: "a file stands where a directory is needed: give another path",
    errno.EEXIST: "a file stands where a directory is needed: give another path",
}


def error_message(err: BaseException) -> str:
    """One line naming the thing and the fix."""
    if isinstance(err, OSError) and err.errno in _OS_FIXES:
        where = f"{err.filename}: " if err.filename else ""
        return f"{where}{err.strerror}; {_OS_FIXES[err.errno]}"
    return str(err)


def main(argv: list[str] | None = None) -> None:
    """`o2o ...`; `--debug` anywhere shows the traceback of an error instead of one line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(USAGE)
        if argv and argv[0] not in ("-h", "--help"):
            console.print(f"[red]o2o: error:[/red] unknown command '{argv[0]}'")
            raise SystemExit(2)
        return
    try:
        COMMANDS[argv[0]](argv[1:])
    except KeyboardInterrupt as err:  # Interrupted: the loop saved a checkpoint first
        if debug:
            raise
        console.print(f"[yellow]o2o {argv[0]}: {err or 'stopped by Ctrl-C'}")
        raise SystemExit(130) from None
    except USER_ERRORS as err:
        if debug:
            raise
        console.print(f"[red]o2o {argv[0]}: error:[/red] {error_message(err)}")
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
