"""The offline dataset: aligned transition arrays, episode boundaries and returns-to-go.

Semantics follow D4RL with the fixes the field converged on (Cal-QL author's fix in CORL#63):
`terminals` end an episode without bootstrapping, `timeouts` end it with bootstrapping, and an
episode also ends wherever `observations[t+1] != next_observations[t]` (logged data is often a
concatenation of broken trajectories).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

FIELDS = ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")
_FLOAT_FIELDS = ("observations", "actions", "rewards", "next_observations")
_FLAG_FIELDS = ("terminals", "timeouts")
# Gap between next_observations[t] and observations[t+1] above which a trajectory is broken.
CONTINUITY_ATOL = 1e-6


class DatasetError(ValueError):
    """A dataset that cannot be used, with the file, the field and the fix in its message."""

    def __init__(self, source: str, field: str, problem: str, fix: str):
        self.source, self.field = source, field
        super().__init__(f"{source}: field '{field}': {problem}. Fix: {fix}")


@jax.jit
def _discounted_returns(rewards: jax.Array, ends: jax.Array, gamma: jax.Array) -> jax.Array:
    """G_t = r_t + gamma * G_{t+1}, restarted after every episode end (one reverse scan)."""

    def step(g_next, inputs):
        r, end = inputs
        g = r + gamma * jnp.where(end, 0.0, g_next)
        return g, g

    _, returns = jax.lax.scan(step, jnp.float32(0.0), (rewards, ends), reverse=True)
    return returns


def discounted_returns(
    rewards: np.ndarray,
    episode_ends: np.ndarray,
    gamma: float,
    failure_reward: float | None = None,
) -> np.ndarray:
    """Discounted Monte-Carlo return from each step to the end of its episode.

    With `failure_reward` set (sparse tasks), an episode whose rewards all equal it gets the
    constant `failure_reward / (1 - gamma)` at every step: the value of failing forever, as in
    Cal-QL, rather than a truncated sum that looks better the shorter the episode.
    """
    rewards = np.asarray(rewards, np.float32)
    ends = np.asarray(episode_ends, bool).copy()
    if len(rewards) == 0:
        return np.zeros(0, np.float32)
    ends[-1] = True
    returns = np.asarray(_discounted_returns(rewards, ends, jnp.float32(gamma)))
    if failure_reward is not None:
        episode_id = np.concatenate([[0], np.cumsum(ends[:-1])])
        failed = rewards == np.float32(failure_reward)
        all_failed = np.bincount(episode_id, weights=~failed) == 0
        returns = np.where(all_failed[episode_id], failure_reward / (1.0 - gamma), returns)
    return returns.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Aligned arrays of N transitions (host memory), validated on construction.

    Use `Dataset.from_arrays` to build one from raw arrays: it coerces dtypes and names the
    offending field when something is wrong.
    """

    observations: np.ndarray  # [N, obs_dim] float32
    actions: np.ndarray  # [N, act_dim] float32
    rewards: np.ndarray  # [N] float32
    next_observations: np.ndarray  # [N, obs_dim] float32
    terminals: np.ndarray  # [N] bool: true end, no bootstrap
    timeouts: np.ndarray  # [N] bool: cut by a time limit, bootstrap
    source: str = "<memory>"

    @classmethod
    def from_arrays(
        cls,
        arrays: dict[str, Any],
        source: str = "<memory>",
        action_low: np.ndarray | float | None = None,
        action_high: np.ndarray | float | None = None,
    ) -> Dataset:
        """Validate and coerce raw arrays; `timeouts` may be absent (all False)."""
        arrays = dict(arrays)
        if "timeouts" not in arrays and "terminals" in arrays:
            arrays["timeouts"] = np.zeros(len(arrays["terminals"]), bool)
        coerced = {name: _coerce(arrays, name, source) for name in FIELDS}
        _check_lengths(coerced, source)
        _check_shapes(coerced, source)
        if action_low is not None or action_high is not None:
            check_action_bounds(coerced["actions"], action_low, action_high, source)
        return cls(**coerced, source=source)

    def __len__(self) -> int:
        return len(self.rewards)

    @property
    def observation_dim(self) -> int:
        return self.observations.shape[1]

    @property
    def action_dim(self) -> int:
        return self.actions.shape[1]

    @property
    def masks(self) -> np.ndarray:
        """1 where the next state's value is bootstrapped (not a true terminal)."""
        return 1.0 - self.terminals.astype(np.float32)

    @property
    def broken(self) -> np.ndarray:
        """True at t where observations[t+1] does not continue next_observations[t]."""
        gap = np.linalg.norm(self.observations[1:] - self.next_observations[:-1], axis=-1)
        return np.concatenate([gap > CONTINUITY_ATOL, [False]])

    @property
    def episode_ends(self) -> np.ndarray:
        """True at the last step of each episode: terminal, timeout, broken, or final row."""
        ends = self.terminals | self.timeouts | self.broken
        if len(ends):
            ends[-1] = True
        return ends

    @property
    def recording_ends(self) -> np.ndarray:
        """True at the last row of each unbroken recording: a timeout, a break in the
        observations, or the final row. Unlike `episode_ends`, a terminal is not one: for data
        whose terminals mark successes the recording goes on after (OGBench single tasks)."""
        ends = self.timeouts | self.broken
        if len(ends):
            ends[-1] = True
        return ends

    def episodes(self) -> list[slice]:
        """One slice per episode, in order."""
        stops = np.flatnonzero(self.episode_ends) + 1
        starts = np.concatenate([[0], stops[:-1]])
        return [slice(int(a), int(b)) for a, b in zip(starts, stops, strict=True)]

    def episode_returns(self, rewards: np.ndarray | None = None) -> np.ndarray:
        """Undiscounted return of each episode (of `rewards` if given, e.g. transformed)."""
        ends = self.episode_ends
        episode_id = np.concatenate([[0], np.cumsum(ends[:-1])])
        weights = self.rewards if rewards is None else rewards
        return np.bincount(episode_id, weights=weights).astype(np.float32)

    def truncated_episodes(self) -> np.ndarray:
        """Per episode: True where it ended without a terminal (timeout, break or data end).

        Their returns-to-go are truncated sums: a lower bound for positive rewards, not the
        true value. They are kept and reported rather than silently treated as terminal.
        """
        return ~self.terminals[self.episode_ends]

    def returns_to_go(self, gamma: float, failure_reward: float | None = None) -> np.ndarray:
        """Discounted Monte-Carlo return from each step (see `discounted_returns`)."""
        return discounted_returns(self.rewards, self.episode_ends, gamma, failure_reward)

    def summary(self) -> dict[str, float | int]:
        """Size, episodes and return statistics. Returns are over complete episodes (ended by
        a terminal or a time limit); episodes cut by a break or the end of the data are only
        counted, since their partial returns would drag the statistics down."""
        ends = self.episode_ends
        complete = (self.terminals | self.timeouts)[ends]
        returns = self.episode_returns()[complete]
        lengths = np.diff(np.concatenate([[0], np.flatnonzero(ends) + 1]))[complete]
        stats = {
            "transitions": len(self),
            "episodes": int(ends.sum()),
            "complete_episodes": int(complete.sum()),
            "terminals": int(self.terminals.sum()),
            "observation_dim": self.observation_dim,
            "action_dim": self.action_dim,
        }
        if len(returns):
            stats |= {
                "return_mean": float(returns.mean()),
                "return_std": float(returns.std()),
                "return_min": float(returns.min()),
                "return_max": float(returns.max()),
                "episode_length_mean": float(lengths.mean()),
            }
        return stats

    def hold_out(self, count: int) -> tuple[Dataset, Dataset]:
        """(the rest, `count` whole episodes), the held-out episodes evenly spaced through the
        data (medium-replay's are ordered by training progress) and the same for every seed."""
        episodes = self.episodes()
        if not 0 <= count < len(episodes):
            raise ValueError(
                f"{self.source}: cannot hold out {count} of its {len(episodes)} episodes; "
                "hold out fewer (0 for none)"
            )
        held = np.zeros(len(self), bool)
        for i in np.unique(np.linspace(0, len(episodes) - 1, count).round().astype(int)):
            held[episodes[i]] = True

        def part(mask: np.ndarray, name: str) -> Dataset:
            rows = {f: getattr(self, f)[mask] for f in FIELDS}
            return Dataset(**rows, source=f"{self.source} ({name})")

        return part(~held, "training episodes"), part(held, "held-out episodes")

    def next_actions(self) -> np.ndarray:
        """The logged action at `next_observations[t]` (ReBRAC's critic penalty): actions[t+1]
        inside an episode. At an episode's last step it is unknown; actions[t] stands in (at a
        terminal the penalty is masked anyway; elsewhere it is a small bias on one step)."""
        following = np.concatenate([self.actions[1:], self.actions[-1:]])
        return np.where(self.episode_ends[:, None], self.actions, following)

    def arrays(self) -> dict[str, np.ndarray]:
        """The stored fields as a dict (for saving or moving to the device)."""
        return {name: getattr(self, name) for name in FIELDS}

    def transitions(self) -> dict[str, np.ndarray]:
        """Training fields: float32 arrays with `masks` in place of the flags."""
        return {
            "observations": self.observations,
            "actions": self.actions,
            "rewards": self.rewards,
            "next_observations": self.next_observations,
            "masks": self.masks,
        }


def _coerce(arrays: dict[str, Any], name: str, source: str) -> np.ndarray:
    if name not in arrays:
        raise DatasetError(
            source,
            name,
            f"missing (found fields: {sorted(arrays)})",
            f"provide '{name}' with one entry per transition",
        )
    value = np.asarray(arrays[name])
    if value.ndim == 2 and value.shape[1] == 1 and name in ("rewards", *_FLAG_FIELDS):
        value = value[:, 0]
    if name in _FLAG_FIELDS:
        if value.dtype != bool and not np.isin(value, (0, 1)).all():
            raise DatasetError(
                source, name, "holds values other than 0/1 or True/False", "store booleans"
            )
        return value.astype(bool)
    if not np.issubdtype(value.dtype, np.number):
        raise DatasetError(
            source, name, f"has dtype {value.dtype}, expected a numeric type", "store float32"
        )
    value = value.astype(np.float32)
    bad = ~np.isfinite(value)
    if bad.any():
        row = int(np.argwhere(np.atleast_1d(bad))[0][0])  # a 0-d value: row 0
        raise DatasetError(
            source,
            name,
            f"has {int(bad.sum())} non-finite values (NaN or inf), the first at row {row}",
            "drop or repair those transitions before loading",
        )
    return value


def _check_lengths(arrays: dict[str, np.ndarray], source: str) -> None:
    n = len(arrays["observations"])
    if n == 0:
        raise DatasetError(source, "observations", "is empty", "provide at least one transition")
    for name, value in arrays.items():
        if len(value) != n:
            raise DatasetError(
                source,
                name,
                f"has {len(value)} rows but observations has {n}",
                "every field needs exactly one row per transition",
            )


def _check_shapes(arrays: dict[str, np.ndarray], source: str) -> None:
    for name, ndim in (("observations", 2), ("next_observations", 2), ("actions", 2)):
        if arrays[name].ndim != ndim:
            raise DatasetError(
                source,
                name,
                f"has shape {arrays[name].shape}, expected (N, dim)",
                "flatten each entry to a vector",
            )
    for name in ("rewards", *_FLAG_FIELDS):
        if arrays[name].ndim != 1:
            raise DatasetError(
                source, name, f"has shape {arrays[name].shape}, expected (N,)", "store a scalar"
            )
    if arrays["observations"].shape[1] != arrays["next_observations"].shape[1]:
        raise DatasetError(
            source,
            "next_observations",
            f"has dim {arrays['next_observations'].shape[1]} but observations has "
            f"{arrays['observations'].shape[1]}",
            "store the same observation vector for both",
        )


def check_action_bounds(
    actions: np.ndarray,
    low: np.ndarray | float | None,
    high: np.ndarray | float | None,
    source: str,
    atol: float = 1e-5,
) -> None:
    """Raise if any action lies outside [low, high] (the task's action space)."""
    low = -np.inf if low is None else np.asarray(low, np.float32)
    high = np.inf if high is None else np.asarray(high, np.float32)
    outside = (actions < low - atol) | (actions > high + atol)
    if outside.any():
        row, col = (int(i) for i in np.argwhere(outside)[0])
        raise DatasetError(
            source,
            "actions",
            f"{int(outside.any(axis=1).sum())} rows lie outside the action space "
            f"[{np.min(low)}, {np.max(high)}], the first at row {row} (dim {col} = "
            f"{actions[row, col]:.4g})",
            "rescale actions to the task's action space, or pick the task they were logged in",
        )
