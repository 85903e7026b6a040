"""Tables for the terminal (rich) and for committed files (Markdown, JSON)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from o2o.data.dataset import Dataset
from o2o.envs.tasks import Task

stdout = Console()  # tables are a command's output; progress and logs go to stderr

DATASET_COLUMNS = {
    "dataset": "dataset",
    "transitions": "transitions",
    "episodes": "episodes",
    "complete_episodes": "complete",
    "terminals": "terminals",
    "return_mean": "return mean",
    "return_std": "return std",
    "return_min": "min",
    "return_max": "max",
    "normalized_score": "normalised score",
}


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def mean_std(values: Sequence[float]) -> str:
    """'mean ± std' over seeds, one decimal."""
    return f"{np.mean(values):.1f} ± {np.std(values):.1f}"


def markdown_table(rows: Sequence[dict[str, Any]], columns: dict[str, str]) -> str:
    """`columns` maps row keys to headers, in order; missing values show as '-'."""
    lines = ["| " + " | ".join(columns.values()) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(k)) for k in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def print_table(rows: Sequence[dict[str, Any]], columns: dict[str, str], title: str = "") -> None:
    """A rich table on a terminal; Markdown when stdout is piped or captured (no wrapping)."""
    if not stdout.is_terminal:
        print(markdown_table(rows, columns), end="")
        return
    table = Table(title=title or None)
    for header in columns.values():
        table.add_column(header, justify="right")
    for row in rows:
        table.add_row(*(_cell(row.get(k)) for k in columns))
    stdout.print(table)


def dataset_row(name: str, dataset: Dataset, task: Task | None) -> dict[str, Any]:
    """A dataset's summary, with its behaviour score on the task's normalised scale (on
    success tasks, the share of complete episodes that end at the goal x 100)."""
    row = {"dataset": name} | dataset.summary()
    if task is not None and task.success_metric and row["complete_episodes"]:
        row["normalized_score"] = 100.0 * row["terminals"] / row["complete_episodes"]
    elif task is not None and "return_mean" in row:
        row["normalized_score"] = task.normalize(row["return_mean"])
    return row


def print_dataset_table(
    rows: Sequence[dict[str, Any]],
    markdown: Path | None = None,
    json_path: Path | None = None,
    command: str | None = None,
) -> None:
    """Show dataset rows; optionally also write them as Markdown (headed by the `command`
    that made them) and JSON."""
    print_table(rows, DATASET_COLUMNS)
    if markdown is not None:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        header = f"Made by `{command}`.\n\n" if command else ""
        markdown.write_text(header + markdown_table(rows, DATASET_COLUMNS))
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(list(rows), indent=1))
