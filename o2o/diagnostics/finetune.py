"""What fine-tuning costs: the dip at the offline-to-online switch, the time to recover from it,
and the regret accumulated online.

All but the regret are computed from a run's evaluation records (`metrics.jsonl`), on the
normalised score:
- `offline_score`: the last offline evaluation, i.e. the policy at the switch (for a run
  without an offline phase, the first online evaluation: the untrained policy);
- `dip`: how far the score falls below `offline_score` during the first `window` fraction
  of the online phase (0 if it never does). This is the "unlearning" that Cal-QL and
  RLPD are about;
- `dip_step`: online environment steps at the bottom of the dip;
- `recovery_steps`: online environment steps until the score is back at `offline_score`
  after the bottom (0 without a dip; None if it never recovers within the run);
- `regret`: what the online phase cost while it was collecting, from its training episodes
  (the policy that acted, exploration and warm-up included; not the evaluations). On tasks
  with a success metric it is Cal-QL's and CORL's cumulative regret, the mean of 1 - success
  over the online training episodes. On dense tasks o2o uses the same form on the normalised
  score, the mean of 1 - clip(score, 0, 100) / 100 (0 = expert throughout, 1 = random or
  worse throughout). None until an online episode has ended;
- `q_bias_at_switch`, `holdout_q_bias_at_switch`: Q minus the Monte-Carlo return at the
  switch, on evaluation rollouts and on held-out dataset episodes;
- `diverged`: True when a score is not a number (NaN is logged as null: runs from before the
  divergence guard, `o2o.train.evaluate.check_finite`); the metrics that need the scores are
  then None.
"""

from __future__ import annotations

from typing import Any

import numpy as np

DIP_WINDOW = 0.25  # the "first part" of fine-tuning in which the dip is measured


def finetune_metrics(
    records: list[dict[str, Any]],
    episodes: list[dict[str, Any]],
    window: float = DIP_WINDOW,
) -> dict[str, Any]:
    """Fine-tuning metrics from evaluation records and the online training episodes
    (`o2o.train.online.episode_record`; see the module docstring); {} for a run with no
    online evaluations after step 0."""
    offline = [r for r in records if r.get("phase") == "offline"]
    online = [r for r in records if r.get("phase") == "online"]
    if len(online) < 2:
        return {}
    switch = offline[-1] if offline else online[0]
    start = _number(switch.get("normalized_score"))
    scores = np.array([_number(r.get("normalized_score")) for r in online])
    steps = np.array([r["env_steps"] for r in online], float)
    if not np.isfinite(start) or not np.isfinite(scores).all():
        finite = scores[np.isfinite(scores)]
        return {
            "diverged": True,
            "offline_score": float(start) if np.isfinite(start) else None,
            "final_online_score": float(scores[-1]) if np.isfinite(scores[-1]) else None,
            "best_online_score": float(finite.max()) if len(finite) else None,
            "regret": regret(episodes),
        }
    early = steps <= window * steps.max()
    bottom = int(np.argmin(np.where(early, scores, np.inf)))
    dip = max(0.0, start - float(scores[bottom]))
    recovery: float | None = 0.0
    if dip > 0:
        regained = np.flatnonzero((scores >= start) & (np.arange(len(scores)) > bottom))
        recovery = float(steps[regained[0]] - steps[bottom]) if len(regained) else None
    return {
        "offline_score": float(start),
        "final_online_score": float(scores[-1]),
        "best_online_score": float(scores.max()),
        "dip": dip,
        "dip_step": float(steps[bottom]) if dip > 0 else None,
        "recovery_steps": recovery,
        "regret": regret(episodes),
        "q_bias_at_switch": switch.get("q_bias"),
        "holdout_q_bias_at_switch": switch.get("holdout_q_bias"),
    }


def _number(value: Any) -> float:
    """A logged value as a float; null (a NaN or infinity when it was logged) as NaN."""
    return float("nan") if value is None else float(value)


def regret(episodes: list[dict[str, Any]]) -> float | None:
    """Mean of 1 - success over training episodes where success is recorded, else of
    1 - clip(score, 0, 100) / 100; None without episodes."""
    if not episodes:
        return None
    if all("success" in e for e in episodes):
        return float(np.mean([1.0 - e["success"] for e in episodes]))
    scores = np.clip([e["score"] for e in episodes], 0.0, 100.0)
    return float(np.mean(1.0 - scores / 100.0))
