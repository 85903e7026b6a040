"""Behaviour policies: small files holding a tanh-Gaussian actor and what is known about it.

A policy file is one `.npz`: the actor's parameters under their flax paths
(`params/MLP_0/Dense_0/kernel`) and a `meta` JSON string (task, layer sizes, returns,
how it was trained). The zoo (`assets/policies/TASK-LEVEL.npz`) holds the `medium` and
`expert` policies that `o2o dataset make` rolls out; `scripts/train_zoo.py` made them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from o2o.nets.policies import TanhGaussian, tanh_gaussian_sample

ZOO_DIR = Path(__file__).resolve().parent.parent / "assets" / "policies"
ZOO_LEVELS = ("random", "medium", "expert")  # random: the untrained initial policy, as D4RL


def save_policy(path: Path, params: Any, meta: dict[str, Any]) -> None:
    """Write a tanh-Gaussian actor's parameters and `meta` (must name `hidden_dims`)."""
    flat = traverse_util.flatten_dict(jax.device_get(params), sep="/")
    arrays = {k: np.asarray(v, np.float32) for k, v in flat.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, meta=np.array(json.dumps(meta)), **arrays)
    tmp.replace(path)


@dataclass(frozen=True)
class Policy:
    """A loaded behaviour policy; `act` is jitted and batched over observations."""

    params: Any
    meta: dict[str, Any]
    module: TanhGaussian

    def __post_init__(self):
        def apply(params, observations, key, deterministic):
            mean, log_std = self.module.apply(params, observations)
            if deterministic:
                return jnp.tanh(mean)
            return tanh_gaussian_sample(mean, log_std, key)[0]

        object.__setattr__(self, "_apply", jax.jit(apply, static_argnums=3))

    def act(
        self, observations: np.ndarray, key: jax.Array, deterministic: bool = False
    ) -> np.ndarray:
        """Actions in [-1, 1] for a batch of observations (sampled unless deterministic)."""
        obs = jnp.asarray(observations, jnp.float32)
        return np.asarray(self._apply(self.params, obs, key, deterministic))


def load_policy(path: Path) -> Policy:
    """Read a policy file; a missing or damaged file is reported with the fix."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: no such policy file; the zoo's policies are made by scripts/train_zoo.py"
        )
    try:
        with np.load(path) as npz:
            meta = json.loads(str(npz["meta"]))
            flat = {k: np.asarray(npz[k]) for k in npz.files if k != "meta"}
        hidden_dims = tuple(meta["hidden_dims"])
        action_dim = int(meta["action_dim"])
    except (KeyError, ValueError, OSError) as err:
        raise ValueError(
            f"{path}: not a valid o2o policy file ({err}); re-create it with scripts/train_zoo.py"
        ) from err
    params = jax.tree.map(jnp.asarray, traverse_util.unflatten_dict(flat, sep="/"))
    return Policy(params, meta, TanhGaussian(action_dim, hidden_dims))


def zoo_dir() -> Path:
    """The zoo's folder: `$O2O_ZOO_DIR`, else the shipped assets/policies."""
    return Path(os.environ.get("O2O_ZOO_DIR", ZOO_DIR))


def zoo_policy(task: str, level: str) -> Path:
    """The policy file of `task` at `level` in the zoo."""
    if level not in ZOO_LEVELS:
        raise ValueError(f"no zoo policy for level '{level}'; levels: {', '.join(ZOO_LEVELS)}")
    return zoo_dir() / f"{task}-{level}.npz"
