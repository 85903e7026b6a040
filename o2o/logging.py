"""Run outputs: `metrics.jsonl` (one object per evaluation), TensorBoard events, console."""

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


class RunLogger:
    """Appends evaluation records. A fresh run starts an empty file; a resumed one (or the
    online phase after an offline one) keeps the records up to `resume_step`: later ones
    belong to the interrupted attempt. `step` counts offline updates, then environment steps
    after them, so the two phases share one axis."""

    def __init__(self, run_dir: Path, resume_step: int | None = None):
        self.path = run_dir / "metrics.jsonl"
        kept = (
            []
            if resume_step is None
            else [r for r in read_metrics(run_dir) if r["step"] <= resume_step]
        )
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        purge = None if resume_step is None else resume_step + 1
        self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=purge)

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
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
