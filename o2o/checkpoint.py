"""A run directory that cannot be corrupted: its lock, and checkpoints (any pytree of arrays:
agent, buffers, RNG keys; plus JSON progress counters).

Leaves are stored by position in a `.npz`; restoring needs a template of the same structure
(built from the run's saved config), and a mismatch is reported rather than loaded wrongly.
A checkpoint NAME is written whole to NAME.tmp (files fsynced, their SHA-256 in a manifest),
then switched in by renaming; the previous one stays as NAME.old until the new one verifies.
`find_checkpoint` returns the newest of NAME.tmp, NAME and NAME.old that verifies, so a crash
at any point of a save loses at most that save.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np

from o2o.logging import console

MANIFEST = "manifest.json"
FILES = ("state.npz", "progress.json")
LOCK_FILE = "lock"


class RunDirectoryInUse(RuntimeError):
    """Another process holds the run directory."""


@contextlib.contextmanager
def locked(run_dirs: list[Path]) -> Iterator[None]:
    """Hold an exclusive lock on each run directory (created if missing) while training; a
    second process on the same directory stops at once, naming the holder's PID. The kernel
    releases the lock when its process ends, however it ends."""
    handles = []
    try:
        for run_dir in run_dirs:
            Path(run_dir).mkdir(parents=True, exist_ok=True)
            handle = open(Path(run_dir) / LOCK_FILE, "a+")  # noqa: SIM115 (held until released)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "unknown"
                handle.close()
                raise RunDirectoryInUse(
                    f"{run_dir} is in use by another o2o process (PID {holder}); wait for it to "
                    "finish, or choose another --out"
                ) from None
            handle.seek(0)
            handle.truncate()
            handle.write(str(os.getpid()))
            handle.flush()
            handles.append(handle)
        yield
    finally:
        for handle in handles:
            handle.close()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def verifies(directory: Path) -> bool:
    """Whether a checkpoint folder is whole: its files match its manifest. A folder written
    before manifests existed (no manifest) counts as whole when both files are there, except
    a NAME.tmp, which is only ever whole with its manifest."""
    directory = Path(directory)
    if not all((directory / name).is_file() for name in FILES):
        return False
    manifest = directory / MANIFEST
    if not manifest.is_file():
        return not directory.name.endswith(".tmp")
    try:
        expected = json.loads(manifest.read_text())
    except json.JSONDecodeError:
        return False
    return all(expected.get(name) == _digest(directory / name) for name in FILES)


def find_checkpoint(directory: Path) -> Path | None:
    """The newest whole checkpoint saved as `directory`: NAME.tmp (a save that finished writing
    but was not switched in), NAME, then NAME.old (the previous one); None if none is whole."""
    directory = Path(directory)
    for candidate in (_sibling(directory, ".tmp"), directory, _sibling(directory, ".old")):
        if candidate.exists() and verifies(candidate):
            return candidate
    return None


def checkpoint_to_resume(directory: Path) -> Path | None:
    """`find_checkpoint`, saying so when the one found is not the latest save."""
    found = find_checkpoint(directory)
    if found is not None and found != Path(directory):
        console.print(f"[yellow]{directory} was not whole: using {found}")
    return found


def _sibling(directory: Path, suffix: str) -> Path:
    return directory.with_name(directory.name + suffix)


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def save_checkpoint(directory: Path, tree: Any, progress: dict[str, Any]) -> None:
    """Write `tree` (arrays) and `progress` (JSON) as the checkpoint `directory`, whole or not
    at all (see the module notes)."""
    directory = Path(directory)
    tmp, old = _sibling(directory, ".tmp"), _sibling(directory, ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    leaves = [
        np.asarray(jax.random.key_data(x) if _is_key(x) else x) for x in jax.tree.leaves(tree)
    ]
    np.savez(tmp / "state.npz", **{f"leaf_{i}": leaf for i, leaf in enumerate(leaves)})
    (tmp / "progress.json").write_text(json.dumps(progress, indent=1))
    (tmp / MANIFEST).write_text(json.dumps({name: _digest(tmp / name) for name in FILES}))
    for name in (*FILES, MANIFEST):
        _fsync(tmp / name)
    _fsync(tmp)
    if directory.exists():
        if verifies(directory):
            shutil.rmtree(old, ignore_errors=True)
            directory.rename(old)  # kept until the new one verifies in place
        else:
            shutil.rmtree(directory)
    tmp.rename(directory)
    _fsync(directory.parent)
    if not verifies(directory):
        raise OSError(f"{directory}: the checkpoint just written does not verify; {old} is kept")
    shutil.rmtree(old, ignore_errors=True)


def stored_shapes(directory: Path) -> list[tuple[int, ...]]:
    """Shapes of the stored arrays, in tree order (to size a template before loading)."""
    with np.load(Path(directory) / "state.npz") as npz:
        return [npz[f"leaf_{i}"].shape for i in range(len(npz.files))]


def load_checkpoint(
    directory: Path, template: Any, leading: bool = False
) -> tuple[Any, dict[str, Any]]:
    """Restore a pytree shaped like `template`, and the progress counters. `leading`: the
    template is only the checkpoint's first part (the agent of an (agent, buffer, key) tuple),
    and the rest is left unread."""
    directory = Path(directory)
    leaves, treedef = jax.tree.flatten(template)
    with np.load(directory / "state.npz") as npz:
        count = min(len(npz.files), len(leaves)) if leading else len(npz.files)
        stored = [npz[f"leaf_{i}"] for i in range(count)]
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
