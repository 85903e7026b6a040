"""Scores over seeds as few seeds allow (Agarwal et al. 2021, "Deep Reinforcement Learning at
the Edge of the Statistical Precipice", and its `rliable` package): the interquartile mean
(IQM) of per-run scores with a 95% stratified-bootstrap confidence interval, the interval of
the difference between two agents or libraries, and performance profiles over tasks.

A run's score is the mean of its last three evaluations (`run_score`), not its final one: a
single evaluation of an offline agent swings by tens of points from one interval to the next.
The IQM drops the best and worst quarter of the runs, so one lucky or failed seed moves it less
than the mean, and it keeps more of the data than the median.

Bootstraps draw runs with replacement within each task (stratified), 2,000 times, taking
percentiles of the resampled statistic; the difference of two agents resamples each side's runs
independently, as rliable compares algorithms. rliable draws from NumPy's global generator, so
each bootstrap here seeds it (and restores it after), which makes a table reproducible.
`rliable` is the optional `report` extra (`pip install 'o2o[report]'`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np

REPS = 2000
LAST = 3  # evaluations averaged into a run's score
CONFIDENCE = 0.95
INSTALL = "pip install 'o2o[report]'"


def available() -> bool:
    """Whether `rliable` is installed (the `report` extra)."""
    try:
        _rliable()
    except ImportError:
        return False
    return True


def _rliable():
    try:
        from rliable import library, metrics
    except ImportError as err:
        raise ImportError(
            f"IQM and bootstrap intervals need rliable, the optional `report` extra: {INSTALL}"
        ) from err
    return library, metrics


@dataclasses.dataclass(frozen=True)
class Interval:
    """A point estimate with its 95% confidence interval, over `runs` runs."""

    point: float
    low: float
    high: float
    runs: int

    def __str__(self) -> str:
        return f"{self.point:.1f} [{self.low:.1f}, {self.high:.1f}]"

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def run_score(scores: Sequence[float], last: int = LAST) -> float:
    """A run's score: the mean of its last `last` evaluations (all of them if it has fewer)."""
    if not len(scores):
        raise ValueError("a run with no evaluations has no score")
    return float(np.mean(np.asarray(scores, float)[-last:]))


def _matrix(scores: Sequence[float] | np.ndarray) -> np.ndarray:
    """Scores as [runs, tasks] (a flat sequence is one task)."""
    array = np.asarray(scores, float)
    return array[:, None] if array.ndim == 1 else array


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _interval(bootstrap, statistic, reps: int, seed: int) -> tuple[float, float]:
    with _seeded(seed):
        bounds = bootstrap.conf_int(statistic, reps=reps, size=CONFIDENCE, method="percentile")
    return float(bounds[0, 0]), float(bounds[1, 0])


def iqm(scores: Sequence[float] | np.ndarray, reps: int = REPS, seed: int = 0) -> Interval:
    """IQM over runs (and tasks, pooled) with its stratified-bootstrap interval; `scores` is
    [runs] or [runs, tasks]."""
    library, metrics = _rliable()
    matrix = _matrix(scores)
    low, high = _interval(library.StratifiedBootstrap(matrix), metrics.aggregate_iqm, reps, seed)
    return Interval(float(metrics.aggregate_iqm(matrix)), low, high, len(matrix))


def iqm_difference(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    reps: int = REPS,
    seed: int = 0,
) -> Interval:
    """IQM(a) - IQM(b) with its interval, each side's runs resampled on their own (the runs
    count is the smaller side's)."""
    library, metrics = _rliable()
    a, b = _matrix(a), _matrix(b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"both sides need the same tasks: {a.shape[1]} against {b.shape[1]}")

    def difference(x: np.ndarray, y: np.ndarray) -> float:
        return metrics.aggregate_iqm(x) - metrics.aggregate_iqm(y)

    bootstrap = library.StratifiedIndependentBootstrap(a, b)
    low, high = _interval(bootstrap, difference, reps, seed)
    return Interval(float(difference(a, b)), low, high, min(len(a), len(b)))


def performance_profile(
    score_dict: dict[str, np.ndarray], taus: np.ndarray, reps: int = REPS, seed: int = 0
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per agent ([runs, tasks] scores), the fraction of runs scoring above each tau, and its
    95% stratified-bootstrap band [2, len(taus)]."""
    library, _ = _rliable()
    profiles, bands = {}, {}
    for name, scores in score_dict.items():
        matrix = _matrix(scores)

        def fractions(x: np.ndarray) -> np.ndarray:
            return np.mean(x[..., None] > taus, axis=(0, 1))

        profiles[name] = fractions(matrix)
        with _seeded(seed):
            bands[name] = library.StratifiedBootstrap(matrix).conf_int(
                fractions, reps=reps, size=CONFIDENCE, method="percentile"
            )
    return profiles, bands


def aggregate(values: Sequence[float]) -> str:
    """A metric over seeds as the tables show it: IQM [95% CI], a lone value as it is, and
    mean ± std where rliable is not installed (`NOTE` says which)."""
    values = [float(v) for v in values]
    if len(values) == 1:
        return f"{values[0]:.1f}"
    if not available():
        return f"{np.mean(values):.1f} ± {np.std(values):.1f}"
    return str(iqm(values))


def note(run_scores: bool = False) -> str:
    """How the tables aggregate seeds, for their captions (`run_scores`: their scores are
    `run_score`s)."""
    scores = f" A run's score is the mean of its last {LAST} evaluations." if run_scores else ""
    if available():
        return f"Over seeds: IQM [95% stratified-bootstrap CI] ({REPS} resamples).{scores}"
    return f"Over seeds: mean ± std (for IQM and bootstrap intervals: {INSTALL}).{scores}"


def band(runs: Sequence[dict[float, float]]) -> tuple[list[float], np.ndarray, np.ndarray]:
    """Per x held by any run: (xs, centre, [low, high]) of the runs' values there: IQM and its
    95% CI, or mean and range without rliable (or with one run)."""
    xs = sorted({x for run in runs for x in run})
    centre, bounds = [], []
    for x in xs:
        values = [run[x] for run in runs if x in run and run[x] is not None]
        values = [v for v in values if np.isfinite(v)]
        if not values:
            centre.append(np.nan)
            bounds.append((np.nan, np.nan))
        elif len(values) > 1 and available():
            interval = iqm(values, reps=500)
            centre.append(interval.point)
            bounds.append((interval.low, interval.high))
        else:
            centre.append(float(np.mean(values)))
            bounds.append((min(values), max(values)))
    return xs, np.asarray(centre), np.asarray(bounds).T
