"""Q-value bias: the agent's Q(s, a) against the discounted Monte-Carlo return actually earned.

Overestimation (offline actor-critic) shows as a positive bias; CQL-style pessimism as a
negative one. Steps near the end of an episode cut by a time limit are excluded: their
Monte-Carlo return misses the rewards after the cut, so it is not the truth there.
"""

from __future__ import annotations

import numpy as np


def valid_for_bias(lengths: list[int], terminated: list[bool], gamma: float) -> np.ndarray:
    """Mask over concatenated episode steps whose Monte-Carlo return is (nearly) complete.

    For a truncated episode, the last 1/(1 - gamma) steps are masked out: beyond that
    horizon the missing tail weighs at most gamma^(1/(1-gamma)) (about 37%) of a step's value.
    """
    horizon = round(1.0 / (1.0 - gamma))
    masks = []
    for length, done in zip(lengths, terminated, strict=True):
        keep = np.ones(length, bool)
        if not done:
            keep[max(length - horizon, 0) :] = False
        masks.append(keep)
    return np.concatenate(masks) if masks else np.zeros(0, bool)


def q_bias_stats(q_pred: np.ndarray, q_mc: np.ndarray, valid: np.ndarray) -> dict[str, float]:
    """`q_pred_mean`, `q_mc_mean` and `q_bias` = mean(Q - MC) over the valid steps."""
    if not valid.any():
        nan = float("nan")
        return {"q_pred_mean": nan, "q_mc_mean": nan, "q_bias": nan}
    pred, mc = q_pred[valid], q_mc[valid]
    return {
        "q_pred_mean": float(pred.mean()),
        "q_mc_mean": float(mc.mean()),
        "q_bias": float((pred - mc).mean()),
    }
