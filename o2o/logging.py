"""Run outputs: `metrics.jsonl` (one object per evaluation), `episodes.jsonl` (one object per
online training episode), TensorBoard events, console."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from tensorboardX import SummaryWriter

console = Console(stderr=True, soft_wrap=True)  # no hard wraps: paths stay whole in logs


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def progress_bar() -> Progress:
    """The bar of a training phase; `info` shows the latest evaluation."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
    )


METRICS_FILE = "metrics.jsonl"
EPISODES_FILE = "episodes.jsonl"


class RunLogger:
    """Appends evaluation records and training-episode records. A fresh run starts empty
    files; a resumed one (or the online phase after an offline one) keeps the records up to
    `resume_step`: later ones belong to the interrupted attempt. `step` counts offline
    updates, then environment steps after them, so the two phases share one axis."""

    def __init__(self, run_dir: Path, resume_step: int | None = None):
        self.path, self.episodes_path = run_dir / METRICS_FILE, run_dir / EPISODES_FILE
        for path in (self.path, self.episodes_path):
            records = [] if resume_step is None else _read_jsonl(path)
            kept = [r for r in records if r["step"] <= resume_step]
            if resume_step is None and path.exists() and path.stat().st_size:
                console.print(
                    f"[yellow]{path}: starting over; the records of an earlier attempt are "
                    "replaced (no whole checkpoint of it is left)"
                )
            if len(kept) < len(records):
                console.print(
                    f"[yellow]{path}: {len(records) - len(kept)} records after step "
                    f"{resume_step} dropped: they belong to an interrupted attempt whose "
                    "checkpoint was not kept"
                )
            path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        purge = None if resume_step is None else resume_step + 1
        self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=purge)

    def log_episode(self, record: dict[str, Any]) -> None:
        """One finished training episode (`o2o.train.online.episode_record`)."""
        with self.episodes_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        self.tb.add_scalar("online/train_return", record["return"], record["env_steps"])

    def log(self, record: dict[str, Any]) -> None:
        record = {k: _jsonable(v) for k, v in record.items()}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        step = record["step"]
        for key, value in record.items():
            if isinstance(value, int | float) and key not in ("step", "env_steps"):
                self.tb.add_scalar(f"{record.get('phase', 'online')}/{key}", value, step)
        self.tb.flush()

    def close(self) -> None:
        self.tb.close()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """A run's evaluation records (none yet: [])."""
    return _read_jsonl(Path(run_dir) / METRICS_FILE)


def read_episodes(run_dir: Path) -> list[dict[str, Any]]:
    """A run's online training-episode records (none yet: [])."""
    return _read_jsonl(Path(run_dir) / EPISODES_FILE)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
