"""`o2o switch-check` (`o2o.diagnostics.switch`): each check raised by what it measures, the
risk from the checks, and the command on a run."""

import json

import numpy as np
from agent_helpers import trained_run

from o2o.cli import main
from o2o.data.dataset import Dataset
from o2o.diagnostics.switch import SWITCH_FILE, action_distance, checks, risk

RECORD = {"holdout_q_bias": -10.0, "holdout_q_mc_mean": 100.0, "q_bias": 5.0, "q_mc_mean": 50.0}


def test_each_check_is_raised_by_what_it_measures():
    calm = checks(RECORD, q_start=100.0, fqe=95.0, distance=1.2)
    assert not any(c.raised for c in calm) and risk(calm)[0] == "low"
    pessimistic = checks(RECORD | {"holdout_q_bias": -40.0}, 100.0, 95.0, 1.2)
    assert [c.name for c in pessimistic if c.raised] == ["holdout_q_bias"]
    level, reason = risk(pessimistic)
    assert level == "medium" and "40% below" in reason and "pessimistic" in reason
    exploiting = checks(RECORD | {"q_bias": 30.0}, 200.0, 100.0, 3.0)
    assert [c.name for c in exploiting if c.raised] == [
        "rollout_q_bias",
        "q_vs_fqe",
        "action_distance",
    ]
    assert risk(exploiting)[0] == "high"
    unmeasured = checks({}, None, None, None)
    assert all(c.value is None and not c.raised for c in unmeasured)
    assert risk(unmeasured) == ("low", "none of the 0 measured checks is raised")


def states_and_actions(n: int, seed: int, policy) -> Dataset:
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, 3)).astype(np.float32)
    actions = policy(obs) + rng.normal(scale=0.05, size=(n, 2)).astype(np.float32)
    return Dataset.from_arrays(
        {
            "observations": obs,
            "actions": np.clip(actions, -1, 1),
            "rewards": np.zeros(n, np.float32),
            "next_observations": obs,
            "terminals": np.ones(n, bool),
        }
    )


def test_action_distance_is_one_for_the_data_and_large_away_from_it():
    def behaviour(obs):
        return np.tanh(obs[:, :2]).astype(np.float32)

    train, held = states_and_actions(5000, 0, behaviour), states_and_actions(500, 1, behaviour)
    assert action_distance(behaviour, train, held) < 1.5
    assert action_distance(lambda obs: -behaviour(obs), train, held) > 3.0


def test_switch_check_command_writes_its_verdict(tmp_path):
    out = trained_run(tmp_path, "td3bc", holdout_episodes=20)
    main(["switch-check", str(out), "--fqe-steps", "200"])
    result = json.loads((out / SWITCH_FILE).read_text())
    assert result["risk"] in ("low", "medium", "high") and result["offline_updates"] == 5
    assert [c["name"] for c in result["checks"]] == [
        "holdout_q_bias",
        "rollout_q_bias",
        "q_vs_fqe",
        "action_distance",
    ]
    # The fixture's rows are one-step episodes cut short: no complete return to hold Q against.
    holdout, *measured = result["checks"]
    assert holdout["value"] is None and "not measured" in holdout["note"]
    assert all(c["value"] is not None for c in measured)
