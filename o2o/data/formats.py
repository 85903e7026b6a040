"""Reading and writing datasets: o2o's native `.npz` and the field's formats.

| format  | layout                                              | `load_dataset` detects it by  |
|---------|-----------------------------------------------------|-------------------------------|
| native  | `.npz` of the six fields plus JSON `meta`           | `.npz` with `timeouts`         |
| d4rl    | `.hdf5` of flat arrays (`env.get_dataset()`)        | `.hdf5`/`.h5` without episodes |
| minari  | folder with `data/main_data.hdf5`, `episode_ID` groups | a folder, or episode groups |
| ogbench | `.npz` with trajectory-end `terminals`              | `.npz` with `masks`            |
| robomimic | `.hdf5` with `data/demo_N` groups (read only)     | `data/demo_*` groups           |

Detection goes by what a file holds, never by what it lacks: the two `.npz` layouts give
`terminals` different meanings (a true terminal; the end of a trajectory), so a file that shows
neither layout's own field is refused with the choice to make (`--from`), not guessed.
Every loader returns a validated `Dataset` (see its schema) and a metadata dict.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from o2o.data.dataset import FIELDS, Dataset, DatasetError

NATIVE_SUFFIX = ".npz"


def save_native(dataset: Dataset, path: str | Path, meta: dict | None = None) -> Path:
    """Write `dataset` (and optional JSON-able metadata) as a compressed `.npz` file."""
    path = Path(path)
    if path.suffix != NATIVE_SUFFIX:
        path = path.with_suffix(NATIVE_SUFFIX)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Unique per process: two processes making the same cached dataset never share a file.
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp.npz")
    np.savez_compressed(tmp, **dataset.arrays(), meta=np.asarray(json.dumps(meta or {})))
    tmp.replace(path)
    return path


def load_native(
    path: str | Path,
    action_low: np.ndarray | float | None = None,
    action_high: np.ndarray | float | None = None,
) -> tuple[Dataset, dict]:
    """Read a native `.npz` dataset; returns the validated dataset and its metadata. Without
    `next_observations`, the next observation is the following row's, as for D4RL files."""
    path = Path(path)
    arrays = _read_npz(path)
    meta = _meta(arrays.pop("meta", None), path)
    if "next_observations" not in arrays and "observations" in arrays:
        arrays = _next_from_following(arrays, str(path))
    dataset = Dataset.from_arrays(arrays, str(path), action_low, action_high)
    return dataset, meta


# --- D4RL (.hdf5) -------------------------------------------------------------------------------


def load_d4rl_hdf5(
    path: str | Path,
    action_low: np.ndarray | float | None = None,
    action_high: np.ndarray | float | None = None,
) -> tuple[Dataset, dict]:
    """Read a D4RL-style `.hdf5` file (flat arrays at the root, as `env.get_dataset()` gives).

    Without `next_observations` (older D4RL files), the next observation is `observations[t+1]`
    and rows cut by a time limit are dropped, as D4RL's `qlearning_dataset` does; the jump to
    the next episode is then found by the continuity rule. Without `timeouts`, none is assumed.
    """
    path = Path(path)
    with _open_hdf5(path) as f:
        missing = [
            name for name in ("observations", "actions", "rewards", "terminals") if name not in f
        ]
        if missing:
            raise DatasetError(
                str(path),
                missing[0],
                f"missing at the file's root (found: {sorted(f.keys())})",
                "store D4RL's flat arrays, or pass format='minari' for episode groups",
            )
        arrays = {name: _read_field(f, name, path) for name in FIELDS if name in f}
        meta = _meta(f.attrs.get("o2o_meta"), path)
    if "next_observations" not in arrays:
        arrays = _next_from_following(arrays, str(path))
    return Dataset.from_arrays(arrays, str(path), action_low, action_high), meta


def _aligned(arrays: dict[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
    """`arrays`, checked to hold one row per step (at least one step) before a loader derives
    fields from neighbouring rows."""
    n = len(np.atleast_1d(arrays["observations"]))
    for name, value in arrays.items():
        if name == "meta":
            continue
        rows = np.shape(value)[0] if np.ndim(value) else None
        if rows != n or n == 0:
            raise DatasetError(
                source,
                name,
                f"has shape {np.shape(value)}; observations have {n} rows",
                "store every field with one row per step (at least one step)",
            )
    return arrays


def _next_from_following(arrays: dict[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
    arrays = _aligned(arrays, source)
    n = len(arrays["observations"])
    timeouts = _flags(arrays, "timeouts", source) if "timeouts" in arrays else np.zeros(n, bool)
    keep = ~timeouts
    keep[-1] = False  # the last row has no following observation
    out = {name: np.asarray(value)[keep] for name, value in arrays.items()}
    out["next_observations"] = np.asarray(arrays["observations"])[1:][keep[:-1]]
    out["timeouts"] = np.zeros(int(keep.sum()), bool)
    return out


def save_d4rl_hdf5(dataset: Dataset, path: str | Path, meta: dict | None = None) -> Path:
    """Write the six fields as flat root datasets (readable by D4RL-style loaders)."""
    path = _prepared(path, ".hdf5")
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        for name, value in dataset.arrays().items():
            f.create_dataset(name, data=value, compression="gzip")
        f.attrs["o2o_meta"] = json.dumps(meta or {})
    tmp.replace(path)
    return path


# --- Minari (folder with data/main_data.hdf5) ---------------------------------------------------


def _minari_file(path: Path) -> Path:
    for candidate in (path / "data" / "main_data.hdf5", path / "main_data.hdf5", path):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{path}: no Minari data (expected {path / 'data' / 'main_data.hdf5'})")


def _minari_observations(node: h5py.Group | h5py.Dataset) -> np.ndarray:
    """A Dict observation space is flattened by concatenating its keys in sorted order."""
    if isinstance(node, h5py.Dataset):
        value = node[()]
        return value.reshape(len(value), -1)
    return np.concatenate([_minari_observations(node[key]) for key in sorted(node)], -1)


def load_minari(
    path: str | Path,
    action_low: np.ndarray | float | None = None,
    action_high: np.ndarray | float | None = None,
) -> tuple[Dataset, dict]:
    """Read a Minari dataset folder (`data/main_data.hdf5`, one `episode_ID` group each).

    Each episode holds T+1 observations and T actions, rewards, terminations, truncations;
    terminations become `terminals` and truncations `timeouts`. Dict observations (goal-
    conditioned tasks) are concatenated key by key in sorted order, recorded in the metadata
    under `observation_keys`.
    """
    path = Path(path)
    file = _minari_file(path)
    columns: dict[str, list[np.ndarray]] = {name: [] for name in FIELDS}
    keys: list[str] = []
    with _open_hdf5(file) as f:
        names = sorted((k for k in f if k.startswith("episode_")), key=lambda k: int(k[8:]))
        if not names:
            raise DatasetError(
                str(file), "episode_*", "no episode groups", "point to a Minari dataset folder"
            )
        for name in names:
            episode = f[name]
            for field in ("observations", "actions", "rewards", "terminations", "truncations"):
                if field not in episode:
                    raise DatasetError(
                        f"{file}:{name}", field, "missing", "re-create the Minari dataset"
                    )
            if isinstance(episode["observations"], h5py.Group):
                keys = sorted(episode["observations"])
            obs = _minari_observations(episode["observations"])
            steps = len(episode["actions"])
            if len(obs) != steps + 1:
                raise DatasetError(
                    f"{file}:{name}",
                    "observations",
                    f"has {len(obs)} rows for {steps} actions (Minari stores T+1)",
                    "re-create the Minari dataset",
                )
            columns["observations"].append(obs[:-1])
            columns["next_observations"].append(obs[1:])
            source = f"{file}:{name}"
            read = {
                field: _read_field(episode, field, source)
                for field in ("actions", "rewards", "terminations", "truncations")
            }
            columns["actions"].append(read["actions"].reshape(steps, -1))
            columns["rewards"].append(read["rewards"].reshape(steps))
            terminals = read["terminations"].reshape(steps).astype(bool)
            timeouts = read["truncations"].reshape(steps).astype(bool) & ~terminals
            columns["terminals"].append(terminals)
            columns["timeouts"].append(timeouts)
    meta = {}
    metadata = file.parent / "metadata.json"
    if metadata.is_file():
        meta = _meta(metadata.read_text(), metadata)
        meta = meta.get("o2o_meta", {}) | {"minari": meta}
    if keys:
        meta["observation_keys"] = keys
    arrays = {name: np.concatenate(parts) for name, parts in columns.items()}
    return Dataset.from_arrays(arrays, str(path), action_low, action_high), meta


def save_minari(dataset: Dataset, path: str | Path, meta: dict | None = None) -> Path:
    """Write a Minari dataset folder (`data/main_data.hdf5` and `data/metadata.json`, readable by
    the `minari` package: `minari.MinariDataset(path / "data")`): one episode per o2o episode.

    An episode that ends without a terminal is stored as truncated (Minari has no other way to
    say "cut"); its T+1-th observation is the last `next_observations` row.
    """
    path = Path(path)
    (path / "data").mkdir(parents=True, exist_ok=True)
    file = path / "data" / "main_data.hdf5"
    tmp = file.with_name(file.name + ".tmp")
    episodes = dataset.episodes()
    with h5py.File(tmp, "w") as f:
        for i, steps in enumerate(episodes):
            group = f.create_group(f"episode_{i}")
            last = steps.stop - 1
            obs = np.concatenate([dataset.observations[steps], dataset.next_observations[[last]]])
            terminals = dataset.terminals[steps]
            truncations = np.zeros_like(terminals)
            truncations[-1] = not terminals[-1]
            group.create_dataset("observations", data=obs)
            group.create_dataset("actions", data=dataset.actions[steps])
            group.create_dataset("rewards", data=dataset.rewards[steps])
            group.create_dataset("terminations", data=terminals)
            group.create_dataset("truncations", data=truncations)
            group.attrs["id"] = i
            group.attrs["total_steps"] = len(terminals)
        f.attrs["total_episodes"] = len(episodes)
        f.attrs["total_steps"] = len(dataset)
    tmp.replace(file)
    name = (meta or {}).get("name", path.name)
    low = np.minimum(dataset.actions.min(0), -1.0)  # the unit box, or wider if the data is
    high = np.maximum(dataset.actions.max(0), 1.0)
    metadata = {
        "dataset_id": name if re.search(r"-v\d+$", name) else f"{name}-v0",
        "minari_version": MINARI_FORMAT_VERSION,
        "total_episodes": len(episodes),
        "total_steps": len(dataset),
        "data_format": "hdf5",
        "observation_space": _box_json(
            np.full(dataset.observation_dim, -np.inf), np.full(dataset.observation_dim, np.inf)
        ),
        "action_space": _box_json(low, high),
        "o2o_meta": meta or {},
    }
    (path / "data" / "metadata.json").write_text(json.dumps(metadata, indent=1))
    return path


# The Minari dataset format o2o writes (the `minari` package reads it: tests/test_formats.py).
MINARI_FORMAT_VERSION = "0.5.0"


def _box_json(low: np.ndarray, high: np.ndarray) -> str:
    """A float32 Box as Minari serialises spaces in its metadata (a JSON string)."""
    box = {"type": "Box", "dtype": "float32", "shape": [len(low)]}
    return json.dumps(box | {"low": [float(x) for x in low], "high": [float(x) for x in high]})


# --- OGBench (.npz) -----------------------------------------------------------------------------


def load_ogbench(
    path: str | Path,
    action_low: np.ndarray | float | None = None,
    action_high: np.ndarray | float | None = None,
) -> tuple[Dataset, dict]:
    """Read an OGBench `.npz` dataset.

    In OGBench `terminals` marks the last step of each trajectory (an episode boundary, not a
    true terminal); true terminals are `masks == 0`, present with `rewards` only in the single-
    task datasets. Without `next_observations` (the compact files), the next observation is
    `observations[t+1]` and each trajectory's last row is dropped, as OGBench's loader does.
    """
    path = Path(path)
    arrays = _read_npz(path)
    for name in ("observations", "actions", "terminals"):
        if name not in arrays:
            raise DatasetError(
                str(path), name, f"missing (found: {sorted(arrays)})", "pass an OGBench dataset"
            )
    if "rewards" not in arrays:
        raise DatasetError(
            str(path),
            "rewards",
            "missing: goal-conditioned OGBench data has no rewards",
            "use the task's `-singletask` dataset, or relabel rewards for one goal first",
        )
    arrays = _aligned(arrays, str(path))
    n = len(arrays["observations"])
    ends = _flags(arrays, "terminals", str(path))
    masks = _flags(arrays, "masks", str(path)) if "masks" in arrays else np.ones(n, bool)
    out = {
        "observations": arrays["observations"],
        "actions": arrays["actions"],
        "rewards": arrays["rewards"],
        "terminals": ~masks,
        "timeouts": ends & masks,
    }
    if "next_observations" in arrays:
        out["next_observations"] = arrays["next_observations"]
    else:
        keep = ~ends
        keep[-1] = False
        out = {name: np.asarray(value)[keep] for name, value in out.items()}
        out["next_observations"] = np.asarray(arrays["observations"])[1:][keep[:-1]]
        # The row before a dropped trajectory end now ends its trajectory (the continuity rule
        # would also find it); say so explicitly unless it is a true terminal.
        last = np.flatnonzero(ends[1:] & keep[:-1])
        position = np.cumsum(keep) - 1
        out["timeouts"][position[last]] |= ~out["terminals"][position[last]]
    meta = _meta(arrays.get("meta"), path)
    return Dataset.from_arrays(out, str(path), action_low, action_high), meta


def save_ogbench(dataset: Dataset, path: str | Path, meta: dict | None = None) -> Path:
    """Write OGBench's single-task layout (with `next_observations`, `rewards` and `masks`)."""
    path = _prepared(path, ".npz")
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(
        tmp,
        observations=dataset.observations,
        actions=dataset.actions,
        next_observations=dataset.next_observations,
        rewards=dataset.rewards,
        terminals=dataset.episode_ends.astype(np.float32),
        masks=dataset.masks,
        meta=np.asarray(json.dumps(meta or {})),
    )
    tmp.replace(path)
    return path


# --- robomimic (.hdf5 demonstrations) ------------------------------------------------------------


def load_robomimic(
    path: str | Path,
    action_low: np.ndarray | float | None = None,
    action_high: np.ndarray | float | None = None,
    obs_keys: list[str] | None = None,
    split: str | None = "train",
) -> tuple[Dataset, dict]:
    """Read robomimic demonstrations (`data/demo_N/{obs/*, next_obs/*, actions, rewards,
    dones}`), the robot-log layout of robomimic and robosuite.

    Observations are the `obs_keys` (default: every key, sorted) flattened per step and
    concatenated in the order given; `dones` become `terminals`, and a demo's last step without
    one a time-out. `split` names a filter in `mask/` (robomimic's `train`/`valid`): only its
    demos are read; a file without that mask gives all of them (None: all, always). The metadata
    records the keys, the split and robomimic's `env_args`.
    """
    path = Path(path)
    columns: dict[str, list[np.ndarray]] = {name: [] for name in FIELDS}
    with _open_hdf5(path) as f:
        if "data" not in f or not isinstance(f["data"], h5py.Group):
            raise DatasetError(
                str(path), "data", "missing", "point to a robomimic demonstration file"
            )
        names = sorted((k for k in f["data"] if k.startswith("demo_")), key=lambda k: int(k[5:]))
        used_split = split if split is not None and f"mask/{split}" in f else None
        if used_split is not None:
            chosen = {n.decode() if isinstance(n, bytes) else str(n) for n in f["mask"][split][()]}
            names = [n for n in names if n in chosen]
        if not names:
            raise DatasetError(
                str(path),
                "data/demo_*",
                "no demonstrations" + (f" in split '{split}'" if used_split else ""),
                "point to a robomimic file with demonstrations, or pick another split",
            )
        keys = obs_keys or sorted(f["data"][names[0]]["obs"])
        for name in names:
            demo, source = f["data"][name], f"{path}:data/{name}"
            for field in ("obs", "actions", "rewards", "dones"):
                if field not in demo:
                    raise DatasetError(source, field, "missing", "re-create the robomimic file")
            steps = len(demo["actions"])
            obs = _robomimic_obs(demo["obs"], keys, steps, f"{source}/obs")
            if "next_obs" in demo:
                next_obs = _robomimic_obs(demo["next_obs"], keys, steps, f"{source}/next_obs")
            else:  # the following step's; the last step has none and is dropped
                obs, next_obs, steps = obs[:-1], obs[1:], steps - 1
            read = {k: _read_field(demo, k, source) for k in ("actions", "rewards", "dones")}
            terminals = read["dones"].reshape(-1)[:steps].astype(bool)
            timeouts = np.zeros(steps, bool)
            timeouts[-1] = not terminals[-1]
            columns["observations"].append(obs)
            columns["next_observations"].append(next_obs)
            columns["actions"].append(read["actions"].reshape(len(read["actions"]), -1)[:steps])
            columns["rewards"].append(read["rewards"].reshape(-1)[:steps])
            columns["terminals"].append(terminals)
            columns["timeouts"].append(timeouts)
        env_args = f["data"].attrs.get("env_args")
    meta = {"observation_keys": list(keys), "robomimic_split": used_split}
    if env_args is not None:
        meta["robomimic_env_args"] = _meta(env_args, path)
    arrays = {name: np.concatenate(parts) for name, parts in columns.items()}
    return Dataset.from_arrays(arrays, str(path), action_low, action_high), meta


def _robomimic_obs(group: h5py.Group, keys: list[str], steps: int, source: str) -> np.ndarray:
    """The `keys` of an observation group, each flattened per step, side by side."""
    missing = [k for k in keys if k not in group]
    if missing:
        raise DatasetError(
            source, missing[0], f"missing (keys: {sorted(group)})", "choose keys the file has"
        )
    parts = [_read_field(group, k, source) for k in keys]
    for key, part in zip(keys, parts, strict=True):
        if np.ndim(part) == 0 or len(part) != steps:
            raise DatasetError(
                source,
                key,
                f"has shape {np.shape(part)} for {steps} actions",
                "store one row per step",
            )
    return np.concatenate([part.reshape(steps, -1) for part in parts], axis=-1)


# --- dispatch -----------------------------------------------------------------------------------

LOADERS = {
    "native": load_native,
    "d4rl": load_d4rl_hdf5,
    "minari": load_minari,
    "ogbench": load_ogbench,
    "robomimic": load_robomimic,
}
SAVERS = {
    "native": save_native,
    "d4rl": save_d4rl_hdf5,
    "minari": save_minari,
    "ogbench": save_ogbench,
}
FORMATS = tuple(LOADERS)
_HDF5_SUFFIXES = (".hdf5", ".h5")


def detect_format(path: str | Path) -> str:
    """The format of an existing dataset file or folder, from its layout."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such dataset file or folder")
    if path.is_dir():
        _minari_file(path)
        return "minari"
    if path.suffix in _HDF5_SUFFIXES:
        with _open_hdf5(path) as f:
            if any(k.startswith("episode_") for k in f):
                return "minari"
            robomimic = isinstance(f.get("data"), h5py.Group)
            return (
                "robomimic"
                if robomimic and any(k.startswith("demo_") for k in f["data"])
                else "d4rl"
            )
    if path.suffix == NATIVE_SUFFIX:
        return _npz_format(path, set(_read_npz(path, names_only=True)))
    raise ValueError(
        f"{path}: cannot tell the dataset format from the suffix '{path.suffix}'; "
        f"pass one of {', '.join(FORMATS)} (--from on the command line)"
    )


def _npz_format(path: Path, names: set[str]) -> str:
    """native or ogbench, from the field that only one of them has."""
    if "masks" in names:
        return "ogbench"
    if "timeouts" in names:  # o2o's and D4RL's
        return "native"
    if "rewards" not in names:
        raise DatasetError(
            str(path),
            "rewards",
            f"missing (found {sorted(names)}); OGBench's goal-conditioned datasets have none",
            "use the task's `-singletask` dataset, or relabel rewards for one goal first",
        )
    raise DatasetError(
        str(path),
        "terminals",
        "cannot tell what it means: the file has neither `timeouts` (o2o's and D4RL's layout, "
        "where terminals are true terminals) nor `masks` (OGBench's, where terminals end "
        f"trajectories); found {sorted(names)}",
        "pass the format: --from native (terminals are true terminals) or --from ogbench",
    )


def load_dataset(
    path: str | Path,
    action_low: np.ndarray | float | None = None,
    action_high: np.ndarray | float | None = None,
    format: str | None = None,
    options: dict | None = None,
) -> tuple[Dataset, dict]:
    """Read a dataset in any supported format (detected when `format` is None); `options` go
    to the robomimic reader (`obs_keys`, `split`), the only one that takes any."""
    format = format or detect_format(path)
    if format not in LOADERS:
        raise ValueError(f"unknown dataset format '{format}'; known: {', '.join(FORMATS)}")
    options = {k: v for k, v in (options or {}).items() if v is not None}
    if options and format != "robomimic":
        flags = ", ".join(f"--{k.replace('_', '-')}" for k in options)
        raise ValueError(f"{path}: {flags} apply to robomimic files only; this one is {format}")
    return LOADERS[format](path, action_low, action_high, **options)


def save_dataset(
    dataset: Dataset, path: str | Path, format: str | None = None, meta: dict | None = None
) -> Path:
    """Write `dataset` as `format`; by default `.hdf5`/`.h5` means D4RL, a name without a
    suffix a Minari folder, anything else native `.npz`."""
    path = Path(path)
    if format is None:
        format = (
            "d4rl" if path.suffix in _HDF5_SUFFIXES else "minari" if not path.suffix else "native"
        )
    if format not in SAVERS:
        raise ValueError(f"cannot write format '{format}'; writable: {', '.join(SAVERS)}")
    return SAVERS[format](dataset, path, meta)


def _prepared(path: str | Path, suffix: str) -> Path:
    path = Path(path)
    if not path.suffix:
        path = path.with_suffix(suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _read_npz(path: Path, names_only: bool = False) -> dict:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such dataset file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {name: None if names_only else npz[name] for name in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise DatasetError(
            str(path), "<file>", f"is not a readable .npz archive ({err})", "re-create the file"
        ) from err


def _flags(arrays: dict[str, np.ndarray], name: str, source: str) -> np.ndarray:
    """A per-step 0/1 field as booleans."""
    value = np.asarray(arrays[name])
    if value.ndim == 2 and value.shape[1] == 1:
        value = value[:, 0]
    if value.ndim != 1 or not np.isin(value, (0, 1)).all():
        raise DatasetError(source, name, "is not one 0/1 value per step", "store 0/1 flags")
    return value.astype(bool)


def _meta(value: Any, path: Path) -> dict:
    """The JSON metadata a file stores ({} without any)."""
    if value is None:
        return {}
    try:
        meta = json.loads(str(value))
    except json.JSONDecodeError as err:
        raise DatasetError(str(path), "meta", f"is not JSON ({err})", "re-create the file") from err
    if not isinstance(meta, dict):
        raise DatasetError(str(path), "meta", "is not a JSON object", "re-create the file")
    return meta


def _read_field(group: h5py.Group, name: str, source: str | Path) -> np.ndarray:
    """An HDF5 array, or a DatasetError naming the field (a group; unreadable data)."""
    node = group[name]
    if not isinstance(node, h5py.Dataset):
        raise DatasetError(str(source), name, "is a group, not an array", "store an array")
    try:
        return node[()]
    except OSError as err:
        raise DatasetError(
            str(source), name, f"cannot be read ({err})", "re-create the file"
        ) from err


@contextlib.contextmanager
def _open_hdf5(path: Path) -> Iterator[h5py.File]:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such dataset file")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise DatasetError(
            str(path), "<file>", f"is not a readable HDF5 file ({err})", "re-create the file"
        ) from err
    with f:
        yield f
