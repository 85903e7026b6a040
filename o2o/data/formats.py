"""Reading and writing datasets. The native format is a compressed `.npz` of the six fields."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from o2o.data.dataset import FIELDS, Dataset, DatasetError

NATIVE_SUFFIX = ".npz"


def save_native(dataset: Dataset, path: str | Path, meta: dict | None = None) -> Path:
    """Write `dataset` (and optional JSON-able metadata) as a compressed `.npz` file."""
    path = Path(path)
    if path.suffix != NATIVE_SUFFIX:
        path = path.with_suffix(NATIVE_SUFFIX)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **dataset.arrays(), meta=np.asarray(json.dumps(meta or {})))
    tmp.replace(path)
    return path


def load_native(
    path: str | Path,
    action_low: np.ndarray | float | None = None,
    action_high: np.ndarray | float | None = None,
) -> tuple[Dataset, dict]:
    """Read a native `.npz` dataset; returns the validated dataset and its metadata."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such dataset file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files if name in FIELDS}
            meta = json.loads(str(npz["meta"])) if "meta" in npz.files else {}
    except (zipfile.BadZipFile, ValueError, OSError) as err:
        raise DatasetError(
            str(path), "<file>", f"is not a readable .npz archive ({err})", "re-create the file"
        ) from err
    dataset = Dataset.from_arrays(arrays, str(path), action_low, action_high)
    return dataset, meta
