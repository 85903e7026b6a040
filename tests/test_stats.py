"""Aggregation over seeds (o2o.report.stats): the IQM and its bootstrap intervals on known
answers, the run score, and the fallback without rliable."""

import numpy as np
import pytest

from o2o.report import stats

pytest.importorskip("rliable")


def test_iqm_trims_a_quarter_at_each_end():
    # 8 runs: the middle 4 (3, 4, 5, 6) remain; one wild seed does not move it.
    assert stats.iqm([1, 2, 3, 4, 5, 6, 7, 1000]).point == pytest.approx(4.5)
    assert stats.iqm([0, 10, 20, 30]).point == pytest.approx(15.0)
    # Over [runs, tasks] the runs of every task are pooled.
    assert stats.iqm(np.array([[0, 10], [20, 30]])).point == pytest.approx(15.0)


def test_intervals_are_reproducible_percentiles_that_hold_the_point():
    scores = [2.7, 2.8, 39.2, 14.4, 33.3]
    first, again = stats.iqm(scores), stats.iqm(scores)
    assert first == again and first.runs == 5
    assert min(scores) <= first.low <= first.point <= first.high <= max(scores)
    assert str(first) == f"{first.point:.1f} [{first.low:.1f}, {first.high:.1f}]"
    assert stats.iqm([5.0, 5.0, 5.0]) == stats.Interval(5.0, 5.0, 5.0, 3)


def test_difference_interval_separates_only_what_the_seeds_separate():
    rng = np.random.default_rng(0)
    low, high = rng.normal(20, 3, 5), rng.normal(60, 3, 5)
    apart = stats.iqm_difference(high, low)
    assert apart.excludes_zero() and apart.low > 25
    noisy = stats.iqm_difference(rng.normal(40, 30, 5), rng.normal(40, 30, 5))
    assert not noisy.excludes_zero()  # 50-point swings between seeds: nothing to rank
    with pytest.raises(ValueError, match="same tasks"):
        stats.iqm_difference(np.zeros((3, 2)), np.zeros((3, 1)))


def test_run_score_is_the_mean_of_the_last_three_evaluations():
    assert stats.run_score([0, 10, 20, 30, 60]) == pytest.approx(110 / 3)
    assert stats.run_score([7.0]) == 7.0
    with pytest.raises(ValueError, match="no evaluations"):
        stats.run_score([])


def test_performance_profile_counts_runs_above_each_threshold():
    scores = {"a": np.array([[10.0, 50.0], [20.0, 60.0], [30.0, 70.0]])}  # 3 runs, 2 tasks
    fractions, bands = stats.performance_profile(scores, np.array([0.0, 25.0, 55.0, 100.0]))
    np.testing.assert_allclose(fractions["a"], [1.0, 4 / 6, 2 / 6, 0.0])
    assert bands["a"].shape == (2, 4) and (bands["a"][0] <= fractions["a"] + 1e-9).all()


def test_without_rliable_tables_say_mean_and_std(monkeypatch):
    monkeypatch.setattr(stats, "available", lambda: False)
    assert stats.aggregate([1.0, 3.0]) == "2.0 ± 1.0"
    assert "mean ± std" in stats.note() and stats.INSTALL in stats.note()
    xs, centre, (low, high) = stats.band([{0: 1.0, 5: 2.0}, {0: 3.0}])
    assert xs == [0, 5] and list(centre) == [2.0, 2.0]
    assert list(low) == [1.0, 2.0] and list(high) == [3.0, 2.0]
