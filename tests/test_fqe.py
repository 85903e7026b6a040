"""Fitted Q evaluation (`o2o.diagnostics.fqe`, `o2o fqe`): known values recovered from data."""

import json

import numpy as np
import pytest
from agent_helpers import trained_run

from o2o.cli import main
from o2o.data.dataset import Dataset
from o2o.diagnostics.fqe import FQE_FILE, FQEConfig, fitted_q_evaluation, start_rows

GAMMA = 0.9
SMALL = FQEConfig(
    hidden_dims=(32, 32),
    lr=1e-3,
    discount=GAMMA,
    steps=8000,
    min_steps=4000,
    eval_interval=500,
    patience=4,
)


def bandit_chain(episodes: int = 60, length: int = 50) -> Dataset:
    """Random 2-d states, uniform actions in [-1, 1], reward 1 - |a - 0.3| at every step, each
    episode cut by a time limit (bootstrapped). A policy taking action c everywhere is worth
    (1 - |c - 0.3|) / (1 - gamma) from any state; the data's uniform actions earn 0.455 per
    step on average."""
    rng = np.random.default_rng(0)
    n = episodes * length
    obs = rng.normal(size=(n + 1, 2)).astype(np.float32)
    actions = rng.uniform(-1, 1, (n, 1)).astype(np.float32)
    timeouts = np.zeros(n, bool)
    timeouts[length - 1 :: length] = True
    next_obs = obs[1:].copy()
    return Dataset.from_arrays(
        {
            "observations": obs[:n],
            "actions": actions,
            "rewards": 1 - np.abs(actions[:, 0] - 0.3),
            "next_observations": next_obs,
            "terminals": np.zeros(n, bool),
            "timeouts": timeouts,
        }
    )


def constant(c: float):
    return lambda obs: np.full((len(obs), 1), c, np.float32)


def test_fqe_recovers_the_values_of_two_policies_and_the_data():
    data = bandit_chain()
    good = fitted_q_evaluation(constant(0.3), data, SMALL)
    poor = fitted_q_evaluation(constant(0.8), data, SMALL)
    assert good["value"] == pytest.approx(10.0, rel=0.1)
    assert poor["value"] == pytest.approx(5.0, rel=0.1)
    truncated = 0.455 * (1 - GAMMA**50) / (1 - GAMMA)  # the data's own, from episode starts
    assert good["behaviour_value"] == pytest.approx(truncated, rel=0.1)
    assert good["step"] >= SMALL.min_steps and len(good["curve"]) >= SMALL.min_steps // 500
    assert good["holdout_episodes"] == 6


def test_start_states_and_an_exact_budget():
    """Successes inside a recording (OGBench single tasks) start no episode for FQE: its start
    states are the recordings' first rows. A budget that is no multiple of the measuring
    interval is run exactly (it ran whole blocks past it)."""
    data = bandit_chain(episodes=4, length=5)
    inside = Dataset.from_arrays(data.arrays() | {"terminals": np.arange(20) % 5 == 2})
    assert start_rows(inside).tolist() == [0, 3, 5, 8, 10, 13, 15, 18]  # splits at successes
    assert start_rows(inside, terminals_inside_recordings=True).tolist() == [0, 5, 10, 15]
    budget = dict(steps=700, min_steps=700, eval_interval=500)
    run = fitted_q_evaluation(constant(0.3), bandit_chain(), FQEConfig(**budget))
    assert run["steps_run"] == 700 and [p["step"] for p in run["curve"]] == [500, 700]


def test_fqe_refuses_what_it_cannot_do():
    one = bandit_chain(episodes=1)
    with pytest.raises(ValueError, match="at least 2 episodes"):
        fitted_q_evaluation(constant(0.0), one, SMALL)
    with pytest.raises(ValueError, match="discount"):
        FQEConfig(discount=1.0)


def test_fqe_command_writes_its_estimate_beside_the_run(tmp_path):
    out = trained_run(tmp_path, "bc")
    main(["fqe", str(out), "--steps", "200", "--min-steps", "100"])
    result = json.loads((out / FQE_FILE).read_text())
    assert result["phase"] == "offline" and result["progress"]["updates"] == 5
    assert np.isfinite(result["value"]) and result["discount"] == 0.99
