"""Behaviour policies: small files holding a tanh-Gaussian actor and what is known about it.

A policy file is one `.npz`: the actor's parameters under their flax paths
(`params/MLP_0/Dense_0/kernel`) and a `meta` JSON string (task, layer sizes, returns,
how it was trained); a policy chain (snapshots of one run) prefixes each path with its index.
The zoo (`assets/policies/TASK-LEVEL.npz`) holds the `random`, `medium` and `expert`
policies that `o2o dataset make` rolls out, and `TASK-medium-replay.npz`, the chain of the
medium run's snapshots; `scripts/train_zoo.py` made them.
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
EXPERT_SCORE = (
    90.0  # normalised: below it, `expert_note` warns that the level is weaker than D4RL's
)


def save_policy(path: Path, params: Any, meta: dict[str, Any]) -> None:
    """Write a tanh-Gaussian actor's parameters and `meta` (must name `hidden_dims`)."""
    _write(path, traverse_util.flatten_dict(jax.device_get(params), sep="/"), meta)


def save_policy_chain(path: Path, params: list[Any], steps: list[int], meta: dict) -> None:
    """Write a sequence of actors (snapshots of one training run, taken at `steps`)."""
    flat = {
        f"{i}/{key}": value
        for i, p in enumerate(params)
        for key, value in traverse_util.flatten_dict(jax.device_get(p), sep="/").items()
    }
    _write(path, flat, meta | {"chain_steps": [int(s) for s in steps]})


def _write(path: Path, flat: dict[str, Any], meta: dict[str, Any]) -> None:
    arrays = {k: np.asarray(v, np.float32) for k, v in flat.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, meta=np.array(json.dumps(meta)), **arrays)
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

    def __reduce__(self):  # for collection workers (the jitted function is rebuilt there)
        return Policy, (jax.tree.map(np.asarray, self.params), self.meta, self.module)

    def act(
        self, observations: np.ndarray, key: jax.Array, deterministic: bool = False
    ) -> np.ndarray:
        """Actions in [-1, 1] for a batch of observations (sampled unless deterministic)."""
        obs = jnp.asarray(observations, jnp.float32)
        return np.asarray(self._apply(self.params, obs, key, deterministic))


def load_policy(path: Path) -> Policy:
    """Read a policy file; a missing or damaged file is reported with the fix."""
    flat, meta, module = _read(path)
    params = jax.tree.map(jnp.asarray, traverse_util.unflatten_dict(flat, sep="/"))
    return Policy(params, meta, module)


def load_policy_chain(path: Path) -> tuple[list[Policy], list[int]]:
    """Read a file written by `save_policy_chain`: the policies and the steps they were taken."""
    flat, meta, module = _read(path)
    if "chain_steps" not in meta:
        raise ValueError(f"{path}: holds one policy, not a chain; read it with load_policy")
    steps = meta["chain_steps"]
    policies = []
    for i in range(len(steps)):
        own = {k.split("/", 1)[1]: v for k, v in flat.items() if k.split("/", 1)[0] == str(i)}
        params = jax.tree.map(jnp.asarray, traverse_util.unflatten_dict(own, sep="/"))
        policies.append(Policy(params, meta | {"env_steps": steps[i]}, module))
    return policies, steps


def _read(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any], TanhGaussian]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: no such policy file; the zoo's policies are made by scripts/train_zoo.py"
        )
    try:
        with np.load(path) as npz:
            meta = json.loads(str(npz["meta"]))
            flat = {k: np.asarray(npz[k]) for k in npz.files if k != "meta"}
        module = TanhGaussian(int(meta["action_dim"]), tuple(meta["hidden_dims"]))
    except (KeyError, ValueError, OSError) as err:
        raise ValueError(
            f"{path}: not a valid o2o policy file ({err}); re-create it with scripts/train_zoo.py"
        ) from err
    return flat, meta, module


def zoo_dir() -> Path:
    """The zoo's folder: `$O2O_ZOO_DIR`, else the shipped assets/policies."""
    return Path(os.environ.get("O2O_ZOO_DIR", ZOO_DIR))


def expert_note(task: str, level: str) -> str | None:
    """A warning when the zoo's expert behind `level` (`expert`, `medium-expert`) scores below
    `EXPERT_SCORE` normalised: D4RL's experts score about 100 by construction (their returns
    define the scale), so the same level name would mislead. None otherwise."""
    if level not in ("expert", "medium-expert"):
        return None
    path = zoo_policy(task, "expert")
    if not path.exists():
        return None
    meta = _read(path)[1]
    score = meta.get("rollout_normalized_score")
    if score is None or score >= EXPERT_SCORE:
        return None
    return (
        f"{task}-{level}: o2o's {task} expert (SAC, {meta.get('env_steps', '?'):,} steps) scores "
        f"{score:.1f} normalised with sampled actions, while D4RL's experts score about 100; "
        f"this `expert` is o2o's best snapshot, not D4RL's (assets/policies/policies.md)"
    )


def zoo_policy(task: str, level: str) -> Path:
    """The policy file of `task` at `level` in the zoo."""
    if level not in ZOO_LEVELS:
        raise ValueError(f"no zoo policy for level '{level}'; levels: {', '.join(ZOO_LEVELS)}")
    return zoo_dir() / f"{task}-{level}.npz"
