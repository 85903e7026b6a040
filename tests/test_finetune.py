"""Fine-tuning metrics on synthetic evaluation curves and training episodes: the dip, recovery
and regret; the benchmark's verdicts on the claims about the switch."""

import functools

import pytest

from o2o.diagnostics.finetune import finetune_metrics, regret


def curve(offline, online, every=10, q_bias=-5.0):
    """Evaluation records: offline scores (updates), then online scores every `every` steps."""
    records = [{"phase": "offline", "normalized_score": s, "q_bias": q_bias} for s in offline]
    records += [
        {"phase": "online", "env_steps": i * every, "normalized_score": s}
        for i, s in enumerate(online)
    ]
    return records


def episodes(scores, successes=None):
    """Training-episode records (`episode_record`), with success flags on a sparse task."""
    records = [{"env_steps": 10 * (i + 1), "score": s} for i, s in enumerate(scores)]
    if successes is not None:
        records = [r | {"success": ok} for r, ok in zip(records, successes, strict=True)]
    return records


def test_dip_recovery_and_regret_by_hand():
    # 8 online evaluations at 0..70 steps; window 0.25 covers steps <= 17.5: 0 and 10 ...
    online = [60, 40, 20, 50, 65, 70, 80, 90]
    train = episodes([10, 30, 50])
    m = finetune_metrics(curve([10, 60], online), train, window=0.5)  # ... here steps <= 35
    assert m["offline_score"] == 60 and m["dip"] == 40 and m["dip_step"] == 20
    assert m["recovery_steps"] == 40 - 20  # back at >= 60 at step 40
    assert m["final_online_score"] == 90 and m["best_online_score"] == 90
    assert m["regret"] == pytest.approx((0.9 + 0.7 + 0.5) / 3)  # the training episodes'
    assert m["q_bias_at_switch"] == -5.0 and m["holdout_q_bias_at_switch"] is None


def test_regret_is_cal_qls_on_training_episodes():
    """Cal-QL's and CORL's regret: the mean of 1 - success over the online training episodes,
    whatever the evaluations say; on a dense task the same form on the score, clipped to
    [0, 100] so that it never goes negative above the expert or past 1 below random."""
    assert regret(episodes([0, 0, 0, 0], [True, False, False, True])) == 0.5
    assert regret(episodes([120, 100, -30, 50])) == pytest.approx((0 + 0 + 1 + 0.5) / 4)
    assert regret([]) is None
    good_evaluations = curve([80], [100, 100, 100])
    m = finetune_metrics(good_evaluations, episodes([0] * 3, [False, False, True]))
    assert m["regret"] == pytest.approx(2 / 3)


def test_the_dip_is_measured_only_in_the_first_part():
    # The fall at step 60 comes after the first quarter (steps <= 17.5): no dip.
    m = finetune_metrics(curve([50], [50, 55, 60, 70, 80, 90, 10, 95]), [])
    assert m["dip"] == 0 and m["dip_step"] is None and m["recovery_steps"] == 0


def test_a_dip_that_never_recovers():
    m = finetune_metrics(curve([70], [70, 30, 40, 50, 60, 65, 60, 55]), [], window=0.5)
    assert m["dip"] == 40 and m["recovery_steps"] is None


def test_online_only_run_starts_from_its_first_evaluation():
    m = finetune_metrics(curve([], [5, 3, 30, 60]), [], window=1.0)
    assert m["offline_score"] == 5 and m["dip"] == 2 and m["recovery_steps"] == 10


def test_no_online_phase_gives_nothing():
    assert finetune_metrics(curve([10, 20], [20]), []) == {}


def _verdicts(table):
    return {row.split(" | ")[0][2:]: row.split(" | ")[-1][:-2] for row in table.splitlines()[2:]}


def test_claims_table_verdicts_on_hand_made_summaries(monkeypatch, bench_script):
    """A claim holds or fails only where the interval over seeds decides it."""
    pytest.importorskip("rliable")
    from o2o.report import stats

    claims_table = bench_script("finetune").claims_table

    for name in ("iqm", "iqm_difference"):  # fewer resamples: the verdicts have wide margins
        monkeypatch.setattr(stats, name, functools.partial(getattr(stats, name), reps=400))

    def runs(algo, **series):
        n = len(next(iter(series.values())))
        fixed = {"q_bias_at_switch": -3.0, "holdout_q_bias_at_switch": 2.0}
        return [{"algo": algo} | fixed | {k: v[i] for k, v in series.items()} for i in range(n)]

    summaries = [
        *runs("cql", dip=[6.0, 5.0, 7.0], final_online_score=[40.0, 44.0, 42.0], regret=[0.5] * 3),
        *runs(
            "calql", dip=[0.0, 1.0, 0.5], final_online_score=[50.0, 52.0, 51.0], regret=[0.4] * 3
        ),
        *runs("rlpd", dip=[0.0] * 3, final_online_score=[30.0, 31.0, 32.0], regret=[0.3] * 3),
    ]
    verdicts = _verdicts(claims_table(summaries))
    assert verdicts == {
        "CQL's Q is below the MC return at the switch (rollouts)": "yes",
        "CQL's Q is below the MC return at the switch (held-out)": "no",
        "CQL dips after the switch": "yes",  # every seed >= 1 point
        "Cal-QL dips less than CQL": "yes",
        "RLPD matches or beats CQL and Cal-QL (final online score)": "no",  # below both
        "RLPD matches or beats CQL and Cal-QL (regret)": "yes",  # lower than both
    }
    spread = [dict(s, dip=d) for s, d in zip(summaries[:3], [0.0, 3.0, 0.2], strict=True)]
    verdicts = _verdicts(claims_table(spread + summaries[3:]))
    assert verdicts["CQL dips after the switch"] == "unresolved: the interval spans 1"
    flat = [dict(s, dip=0.5) if s["algo"] == "cql" else s for s in summaries]
    verdicts = _verdicts(claims_table(flat))
    assert verdicts["CQL dips after the switch"] == "no"
    assert verdicts["Cal-QL dips less than CQL"] == "untestable: CQL does not dip"
    one_seed = _verdicts(claims_table([summaries[0], summaries[3], summaries[6]]))
    assert set(one_seed.values()) == {"untestable: one seed"}
