"""Run outputs: `metrics.jsonl` (one object per evaluation), `episodes.jsonl` (one object per
online training episode), TensorBoard events, console."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import jax
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from tensorboardX import SummaryWriter

console = Console(stderr=True, soft_wrap=True)  # no hard wraps: paths stay whole in logs


def jsonable(value: Any) -> Any:
    """`value`, with every float that is not finite as None (JSON has no NaN), inside dicts,
    lists and tuples too."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
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


PHASE_ORDER = ("offline", "online")


def device_kind() -> str:
    """What this process computes on ('cpu', 'NVIDIA H200', ...): recorded beside every speed
    and in the run's summary, since a run may resume on another machine."""
    return jax.devices()[0].device_kind


class RunLogger:
    """Appends evaluation records and training-episode records. `step` counts offline
    updates, then environment steps after them, so the two phases share one axis.

    A fresh run starts empty files. A resumed one keeps what its restored state has seen,
    `keep = (phase, step)`: the records of earlier phases, and this phase's up to `step`
    (later ones belong to an interrupted attempt); the online phase after an offline one,
    with no checkpoint of its own, keeps `("online", first online step - 1)`."""

    def __init__(self, run_dir: Path, keep: tuple[str, int] | None = None):
        self.path, self.episodes_path = run_dir / METRICS_FILE, run_dir / EPISODES_FILE
        phase, resume_step = keep if keep is not None else (None, None)
        earlier = PHASE_ORDER[: PHASE_ORDER.index(phase)] if phase else ()
        for path in (self.path, self.episodes_path):
            records = [] if keep is None else _read_jsonl(path)
            kept = [
                r
                for r in records
                if r.get("phase", "online") in earlier
                or (r.get("phase", "online") == phase and r["step"] <= resume_step)
            ]
            if keep is None and path.exists() and path.stat().st_size:
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
        record = {k: jsonable(v) for k, v in record.items()}
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


def read_json(path: Path) -> Any:
    """A run's JSON file (config.json, transforms.json...), or a ValueError naming it."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path}: not valid JSON ({err}); repair it, or start the run over in a new --out"
        ) from err


def write_json(path: Path, value: Any) -> None:
    """`value` (made JSON-able: `jsonable`) as `path`, whole or not at all (written beside it,
    then renamed over it)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(jsonable(value), indent=1))
    tmp.replace(path)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a .jsonl file. A last line cut short (the process was killed while
    writing it) is left out, and said; any other line that is not JSON is an error."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines(keepends=True)
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number == len(lines) and not line.endswith("\n"):
                console.print(f"[yellow]{path}: its last line was cut short; it is left out")
                break
            raise ValueError(
                f"{path}: line {number} is not JSON ({err.msg}); repair or delete that line"
            ) from err
    return records
