"""Published numbers beside o2o's benchmark rows, from benchmarks/published/*.toml (each file
names its source): `published(kind, task, algo)`, `kind` being `offline` or `finetune`."""

from __future__ import annotations

import functools
import tomllib
from pathlib import Path

FOLDER = Path(__file__).resolve().parent / "published"


@functools.cache
def _tables() -> tuple[dict, ...]:
    return tuple(tomllib.loads(path.read_text()) for path in sorted(FOLDER.glob("*.toml")))


def published(kind: str, task: str, algo: str) -> tuple[str, str] | None:
    """(value, source) published for `algo` on `task` (a TASK-LEVEL name) after `kind`
    training, or None where no file holds one."""
    for table in _tables():
        value = table.get(kind, {}).get(task, {}).get(algo)
        if value is not None:
            return value, table["source"]
    return None
