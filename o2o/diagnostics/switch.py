"""Is a pre-trained policy likely to unlearn when fine-tuning starts? Measured before any online
step, from what o2o records and a few checks of its own (`o2o switch-check`).

The dip at the switch has two known causes (the survey's; Cal-QL's analysis):
- pessimism: a critic trained to push Q down (CQL's penalty, ensembles' minimum) values the
  data's own returns too low, so the first online returns look better than Q expects; updates
  raise Q for actions the data lacks, and the policy follows them before Q has caught up;
- extrapolation: the policy acts where the data has no actions, so its Q there is a guess that
  online data will correct, in either direction.

The checks, each with the threshold that raises it (heuristics, validated against measured dips
in benchmarks/results/switch_check.md):
- `holdout_q_bias`: Q - Monte-Carlo return on held-out dataset episodes, relative to the
  return (the run's last offline evaluation); below -`BIAS` is pessimism;
- `rollout_q_bias`: the same on the policy's own evaluation episodes; above +`BIAS`, Q
  overestimates what the policy earns (it exploits errors online data will correct);
- `q_vs_fqe`: the critic's value of the policy at the data's start states against fitted Q
  evaluation's (an independent critic, `o2o.diagnostics.fqe`), relative to the latter; beyond
  +-`BIAS` the critic's value is off;
- `action_distance`: how far the policy's actions lie from the data's at the same states: the
  median distance from pi(s) to the nearest action taken at the dataset's states most like s,
  over the same for the logged action of those held-out states; above `DISTANCE` the policy
  acts out of distribution.
Risk: high with two or more raised, medium with one, low with none.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from o2o.data.dataset import Dataset

SWITCH_FILE = "switch_check.json"  # beside a run's summary.json
BIAS = 0.25  # relative Q error that raises a check
DISTANCE = 2.0  # action distance (ratio) that raises `action_distance`
QUERIES = 2000  # held-out states the action distance is measured on
REFERENCE = 100_000  # dataset rows it is measured against, at most
NEIGHBOURS = 10  # dataset states whose actions count as the data's at a state


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    value: float | None  # None: not measured (say why in `note`)
    raised: bool
    note: str


def _nearest_rows(queries: np.ndarray, reference: jax.Array, k: int, chunk: int = 256):
    """Indices of the `k` reference rows nearest to each query row (Euclidean)."""

    @jax.jit
    def block(q):
        d2 = (q**2).sum(1)[:, None] - 2 * q @ reference.T + (reference**2).sum(1)[None]
        return jax.lax.top_k(-d2, k)[1]

    parts = []
    for i in range(0, len(queries), chunk):
        q = queries[i : i + chunk]
        pad = chunk - len(q)  # one shape: one compilation
        out = block(jnp.asarray(np.pad(q, ((0, pad), (0, 0)))))
        parts.append(np.asarray(out)[: len(q)])
    return np.concatenate(parts)


def action_distance(policy, train: Dataset, held: Dataset, seed: int = 0) -> float:
    """How far the policy acts from the data, given the state: on held-out states, the distance
    from pi(s) to the nearest action the training data took at the `NEIGHBOURS` states most like
    s, as a median, over the same median for the logged action a(s); states and actions
    standardised by the training data. 1: as close as the data's own actions; `policy`: raw
    observations -> actions in the data's units."""
    rng = np.random.default_rng(seed)
    rows = np.arange(len(train))
    if len(rows) > REFERENCE:
        rows = rng.choice(len(rows), REFERENCE, replace=False)
    states, actions = train.observations[rows], train.actions[rows]
    s_mean, s_std = states.mean(0), states.std(0) + 1e-6
    a_std = actions.std(0) + 1e-6
    reference = jnp.asarray((states - s_mean) / s_std, jnp.float32)
    queries = rng.choice(len(held), min(QUERIES, len(held)), replace=False)
    query_states = held.observations[queries]
    neighbours = _nearest_rows(
        ((query_states - s_mean) / s_std).astype(np.float32), reference, min(NEIGHBOURS, len(rows))
    )
    candidates = actions[neighbours] / a_std  # [queries, k, A]

    def distances(chosen: np.ndarray) -> np.ndarray:
        gaps = np.linalg.norm(candidates - (chosen / a_std)[:, None], axis=-1)
        return gaps.min(1)

    logged = np.median(distances(held.actions[queries]))
    return float(np.median(distances(np.asarray(policy(query_states)))) / max(logged, 1e-8))


def checks(
    last_offline: dict[str, Any], q_start: float | None, fqe: float | None, distance: float | None
) -> list[Check]:
    """The four checks from the run's last offline evaluation record (`last_offline`), the
    critic's and FQE's values of the policy at the start states (the same units) and the action
    distance; a missing input gives an unmeasured check."""

    def relative(bias_key: str, mc_key: str) -> float | None:
        bias, mc = last_offline.get(bias_key), last_offline.get(mc_key)
        if bias is None or mc is None or not np.isfinite(bias) or abs(mc) < 1e-8:
            return None
        return float(bias / abs(mc))

    held = relative("holdout_q_bias", "holdout_q_mc_mean")
    rollout = relative("q_bias", "q_mc_mean")
    gap = None if q_start is None or fqe is None or abs(fqe) < 1e-8 else (q_start - fqe) / abs(fqe)
    out = [
        Check(
            "holdout_q_bias",
            held,
            held is not None and held < -BIAS,
            "not measured (no held-out episodes)"
            if held is None
            else f"Q is {abs(held):.0%} {'below' if held < 0 else 'above'} the returns the data "
            "earned on held-out episodes"
            + (
                ": pessimistic, so the first online returns will look better than Q expects "
                "and pull the policy toward actions the data lacks"
                if held < -BIAS
                else ""
            ),
        ),
        Check(
            "rollout_q_bias",
            rollout,
            rollout is not None and rollout > BIAS,
            "not measured (no evaluation episodes)"
            if rollout is None
            else f"Q is {abs(rollout):.0%} {'below' if rollout < 0 else 'above'} what the policy "
            "earns in its own episodes"
            + (": it exploits errors in Q that online data will correct" if rollout > BIAS else ""),
        ),
        Check(
            "q_vs_fqe",
            gap,
            gap is not None and abs(gap) > BIAS,
            "not measured (no FQE estimate)"
            if gap is None
            else f"the critic values the policy {abs(gap):.0%} "
            f"{'below' if gap < 0 else 'above'} an independent estimate (FQE)",
        ),
        Check(
            "action_distance",
            distance,
            distance is not None and distance > DISTANCE,
            "not measured"
            if distance is None
            else f"the policy's actions lie {distance:.1f}x as far from the data as the logged "
            "ones" + (": Q there is extrapolated" if distance > DISTANCE else ""),
        ),
    ]
    return out


def risk(found: list[Check]) -> tuple[str, str]:
    """('low' | 'medium' | 'high', the reason in words)."""
    raised = [c for c in found if c.raised]
    level = "high" if len(raised) >= 2 else "medium" if raised else "low"
    if not raised:
        measured = sum(c.value is not None for c in found)
        return level, f"none of the {measured} measured checks is raised"
    return level, "; ".join(c.note for c in raised)
