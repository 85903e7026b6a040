"""Tabulate finished runs (their `summary.json` and `config.json`) as JSON + Markdown.

Usage: python benchmarks/summarize_runs.py --out benchmarks/results/NAME RUN_DIR...
Each row records the command that reproduces the run, rebuilt from its saved config.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from o2o.agents import get_agent
from o2o.train.pipeline import task_preset


def command(config: dict) -> str:
    """The `o2o train` command line of a run: its preset where it is not the task's, and the
    agent flags that differ from that preset."""
    task_default, defaults = task_preset(config["algo"], config["task"])
    preset = config.get("preset") or task_default  # runs from before presets: the task's
    parts = [
        "o2o train",
        f"--algo {config['algo']}",
        f"--task {config['task']}",
        f"--online-steps {config['online_steps']}",
        f"--seed {config['seed']}",
    ]
    if preset != task_default:
        defaults = get_agent(config["algo"]).presets[preset]
        parts.append(f"--preset {preset}")
    for key, value in config["agent"].items():
        default = getattr(defaults, key)
        if value == default or (isinstance(default, tuple) and list(default) == value):
            continue
        flag = "--agent." + key.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else flag.replace("--agent.", "--agent.no-"))
        else:
            parts.append(f"{flag} {value}")
    return " ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--title", default="Runs")
    args = parser.parse_args()
    rows = []
    for run in args.runs:
        summary = json.loads((run / "summary.json").read_text())
        config = json.loads((run / "config.json").read_text())
        rows.append({"run": run.name, "command": command(config), **summary})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    lines = [
        f"# {args.title}",
        "",
        "| command | env steps | final return | final score | best return | wall s |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| `{r['command']}` | {r['env_steps']} | {r['final_return']:.0f} | "
        f"{r['final_score']:.1f} | {r['best_return']:.0f} | {r['wall_s']:.0f} |"
        for r in rows
    ]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
