"""The `o2o` command: `o2o train`, `o2o demo`, `o2o dataset make|info|convert`.

`o2o train --algo NAME ...` reads the algorithm first, so that every other flag (including
`--agent.*` hyperparameters) shows and defaults to that algorithm's reference recipe.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import tyro

from o2o.agents import AGENTS
from o2o.data.formats import FORMATS, load_dataset, save_dataset
from o2o.data.generate import dataset_from_replay, make_dataset
from o2o.envs.tasks import TASKS, get_task
from o2o.logging import console
from o2o.report.tables import dataset_row, print_dataset_table
from o2o.train.pipeline import (
    config_type,
    default_config,
    load_config,
    replay_transitions,
    run_task,
    train,
)

DEMO_DESCRIPTION = "the main job on its embedded default (a short run; prints the run directory)"
USAGE = f"""usage: o2o COMMAND [FLAGS]

commands:
  train   train an agent: o2o train --algo NAME --task TASK[-LEVEL] --offline-steps N
          --online-steps M --seed S --out DIR
  demo    {DEMO_DESCRIPTION}
  dataset make TASK-LEVEL | info PATH|TASK-LEVEL... | convert SRC DST | from-run RUN DST

`o2o COMMAND --help` lists a command's flags."""

# The demo's budget: the RLPD recipe on the default task, cut to run in minutes on 2 CPU cores.
DEMO_STEPS = 2500
DEMO_START_STEPS = 1000


def train_command(argv: list[str]) -> Path:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--algo", default="sac")
    known, _ = pre.parse_known_args(argv)
    if known.algo not in AGENTS:
        raise SystemExit(
            f"o2o train: unknown algorithm '{known.algo}'; choose one of: {', '.join(AGENTS)}"
        )
    default = default_config(known.algo)
    description = "Train an agent. Algorithms: " + "; ".join(
        f"{name}: {spec.summary}" for name, spec in AGENTS.items()
    )
    config = tyro.cli(
        config_type(known.algo),
        default=default,
        args=argv,
        prog="o2o train",
        description=description,
    )
    return train(config)


def demo_command(argv: list[str]) -> Path:
    parser = argparse.ArgumentParser(prog="o2o demo", description=DEMO_DESCRIPTION)
    parser.add_argument("--out", type=Path, default=None, help="default: runs/demo-TIMESTAMP")
    parser.add_argument("--online-steps", type=int, default=DEMO_STEPS)
    parser.add_argument("--start-steps", type=int, default=DEMO_START_STEPS)
    args = parser.parse_args(argv)
    args.out = args.out or Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    config = default_config(
        "rlpd", out=args.out, online_steps=args.online_steps, eval_interval=1000, eval_episodes=5
    )
    config = dataclasses.replace(
        config, agent=dataclasses.replace(config.agent, start_steps=args.start_steps)
    )
    console.print(
        f"o2o demo: RLPD on {config.task} for {args.online_steps} environment steps "
        f"({args.start_steps} random, then {config.agent.utd_ratio} updates per step)"
    )
    run_dir = train(config)
    print(f"report: {run_dir / 'summary.json'} (metrics: {run_dir / 'metrics.jsonl'})")
    print(run_dir)
    return run_dir


def dataset_command(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="o2o dataset", description="Make, inspect, convert.")
    sub = parser.add_subparsers(dest="action", required=True)
    make = sub.add_parser("make", help="generate TASK-LEVEL (cached; levels per task below)")
    make.add_argument("name", help="e.g. hopper-medium; " + _levels_help())
    make.add_argument("--size", type=int, default=None, help="transitions (default: D4RL's)")
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--out", type=Path, default=None, help="also write it here (see convert)")
    info = sub.add_parser("info", help="size, episodes, returns, normalised score")
    info.add_argument("datasets", nargs="+", help="dataset files/folders or TASK-LEVEL names")
    info.add_argument("--task", default=None, help="task for scores, if a file does not say")
    info.add_argument("--size", type=int, default=None, help="for TASK-LEVEL names (see make)")
    info.add_argument("--seed", type=int, default=0, help="for TASK-LEVEL names")
    info.add_argument("--markdown", type=Path, default=None, help="also write a Markdown table")
    info.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    convert = sub.add_parser("convert", help="rewrite a dataset in another format")
    convert.add_argument("src", type=Path)
    convert.add_argument("dst", type=Path)
    convert.add_argument("--to", choices=FORMATS, default=None, help="default: from dst suffix")
    convert.add_argument("--from", dest="src_format", choices=FORMATS, default=None)
    from_run = sub.add_parser("from-run", help="a training run's replay buffer as a dataset")
    from_run.add_argument("run", type=Path, help="run directory (with checkpoints/latest)")
    from_run.add_argument("dst", type=Path)
    from_run.add_argument("--to", choices=FORMATS, default=None, help="default: from dst suffix")
    args = parser.parse_args(argv)
    if args.action == "make":
        dataset, path = make_dataset(args.name, args.size, args.seed)
        rows = [dataset_row(args.name, dataset, get_task(args.name))]
        if args.out is not None:
            meta = {"name": args.name, "task": get_task(args.name).name, "seed": args.seed}
            path = save_dataset(dataset, args.out, meta=meta)
        print_dataset_table(rows)
        print(path)
    elif args.action == "info":
        rows = [_info_row(spec, args) for spec in args.datasets]
        command = "o2o dataset " + " ".join(argv)
        print_dataset_table(rows, args.markdown, args.json, command)
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
        dataset, meta = load_dataset(args.src, format=args.src_format)
        path = save_dataset(dataset, args.dst, format=args.to, meta=meta)
        console.print(f"{args.src} -> {path}: {len(dataset)} transitions")


def _levels_help() -> str:
    return "; ".join(f"{name}: {', '.join(task.levels)}" for name, task in TASKS.items())


def _info_row(spec: str, args: argparse.Namespace) -> dict:
    if Path(spec).exists():
        dataset, meta = load_dataset(Path(spec))
        task_name = args.task or meta.get("task")
        return dataset_row(spec, dataset, get_task(task_name) if task_name else None)
    dataset, _ = make_dataset(spec, args.size, args.seed)
    return dataset_row(spec, dataset, get_task(spec))


COMMANDS = {"train": train_command, "demo": demo_command, "dataset": dataset_command}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(USAGE)
        if argv and argv[0] not in ("-h", "--help"):
            raise SystemExit(f"o2o: unknown command '{argv[0]}'")
        return
    try:
        COMMANDS[argv[0]](argv[1:])
    except (ValueError, FileNotFoundError) as err:
        console.print(f"[red]o2o {argv[0]}: error:[/red] {err}")
        raise SystemExit(2) from err


if __name__ == "__main__":
    main()
