"""Checkpoints: any pytree of arrays (agent, buffers, RNG keys) plus JSON progress counters.

Leaves are stored by position in a `.npz`; restoring needs a template of the same structure
(built from the run's saved config), and a mismatch is reported rather than loaded wrongly.
Writes go to a temporary folder that replaces the old checkpoint only when complete.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def save_checkpoint(directory: Path, tree: Any, progress: dict[str, Any]) -> None:
    """Atomically write `tree` (arrays) and `progress` (JSON) to `directory`."""
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    leaves = [
        np.asarray(jax.random.key_data(x) if _is_key(x) else x) for x in jax.tree.leaves(tree)
    ]
    np.savez(tmp / "state.npz", **{f"leaf_{i}": leaf for i, leaf in enumerate(leaves)})
    (tmp / "progress.json").write_text(json.dumps(progress, indent=1))
    old = directory.with_name(directory.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)


def stored_shapes(directory: Path) -> list[tuple[int, ...]]:
    """Shapes of the stored arrays, in tree order (to size a template before loading)."""
    with np.load(Path(directory) / "state.npz") as npz:
        return [npz[f"leaf_{i}"].shape for i in range(len(npz.files))]


def load_checkpoint(directory: Path, template: Any) -> tuple[Any, dict[str, Any]]:
    """Restore a pytree shaped like `template`, and the progress counters."""
    directory = Path(directory)
    leaves, treedef = jax.tree.flatten(template)
    with np.load(directory / "state.npz") as npz:
        stored = [npz[f"leaf_{i}"] for i in range(len(npz.files))]
    if len(stored) != len(leaves):
        raise ValueError(
            f"{directory}: checkpoint holds {len(stored)} arrays but this config expects "
            f"{len(leaves)}; it was written by a different configuration (use a new --out)"
        )
    restored = []
    for i, (old, new) in enumerate(zip(leaves, stored, strict=True)):
        if _is_key(old):
            restored.append(jax.random.wrap_key_data(new))
            continue
        if np.shape(old) != new.shape:
            raise ValueError(
                f"{directory}: array {i} has shape {new.shape}, expected {np.shape(old)}; "
                "the checkpoint was written by a different configuration (use a new --out)"
            )
        restored.append(jax.numpy.asarray(new, dtype=jax.numpy.asarray(old).dtype))
    progress = json.loads((directory / "progress.json").read_text())
    return jax.tree.unflatten(treedef, restored), progress
