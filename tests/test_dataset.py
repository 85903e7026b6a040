"""Data layer: episode splitting, returns-to-go on hand-made episodes, validation, file format."""

import numpy as np
import pytest

from o2o.data.dataset import Dataset, DatasetError, discounted_returns
from o2o.data.formats import load_native, save_native

GAMMA = 0.9


def make(rewards, terminals, timeouts, breaks=()):
    """A 1-d chain dataset: obs[t] = t, next_obs[t] = t + 1, except where a break is planted."""
    n = len(rewards)
    obs = np.arange(n, dtype=np.float32)[:, None]
    next_obs = obs + 1
    for t in breaks:  # the next row starts somewhere else: a broken trajectory
        obs[t + 1 :] += 100
        next_obs[t + 1 :] += 100
    return Dataset.from_arrays(
        {
            "observations": obs,
            "actions": np.zeros((n, 1), np.float32),
            "rewards": np.asarray(rewards, np.float32),
            "next_observations": next_obs,
            "terminals": np.asarray(terminals, bool),
            "timeouts": np.asarray(timeouts, bool),
        }
    )


def test_returns_to_go_terminal_and_timeout_episodes():
    # episode 1: 3 steps ending in a terminal; episode 2: 2 steps cut by a timeout.
    ds = make([1, 2, 3, 4, 5], [0, 0, 1, 0, 0], [0, 0, 0, 0, 1])
    rtg = ds.returns_to_go(GAMMA)
    expected = [1 + GAMMA * 2 + GAMMA**2 * 3, 2 + GAMMA * 3, 3, 4 + GAMMA * 5, 5]
    np.testing.assert_allclose(rtg, expected, rtol=1e-6)
    np.testing.assert_array_equal(ds.masks, [1, 1, 0, 1, 1])  # timeouts bootstrap
    assert [(s.start, s.stop) for s in ds.episodes()] == [(0, 3), (3, 5)]
    np.testing.assert_array_equal(ds.truncated_episodes(), [False, True])
    np.testing.assert_allclose(ds.episode_returns(), [6, 9])


def test_broken_trajectory_splits_episode():
    # No flag marks the end of the first episode, but obs[2] does not continue next_obs[1].
    ds = make([1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0], breaks=[1])
    assert [(s.start, s.stop) for s in ds.episodes()] == [(0, 2), (2, 4)]
    np.testing.assert_allclose(ds.returns_to_go(GAMMA), [1 + GAMMA, 1, 1 + GAMMA, 1], rtol=1e-6)


def test_all_failure_sparse_episode_gets_constant_return():
    # episode 1 never succeeds (all -1): every step gets -1 / (1 - gamma), not a short sum.
    # episode 2 succeeds at its last step: ordinary discounted sum.
    ds = make([-1, -1, -1, -1, 0], [0, 0, 1, 0, 1], [0, 0, 0, 0, 0])
    rtg = ds.returns_to_go(GAMMA, failure_reward=-1.0)
    np.testing.assert_allclose(rtg[:3], [-1 / (1 - GAMMA)] * 3, rtol=1e-6)
    np.testing.assert_allclose(rtg[3:], [-1 + GAMMA * 0, 0], rtol=1e-6)
    # Without the sparse convention the failed episode is a plain truncated sum.
    plain = ds.returns_to_go(GAMMA)
    np.testing.assert_allclose(plain[0], -1 - GAMMA - GAMMA**2, rtol=1e-6)


def test_discounted_returns_matches_python_loop():
    rng = np.random.default_rng(0)
    rewards = rng.normal(size=500).astype(np.float32)
    ends = rng.random(500) < 0.05
    expected, g = np.zeros(500), 0.0
    for t in reversed(range(500)):
        g = rewards[t] + (0.0 if ends[t] or t == 499 else 0.99 * g)
        expected[t] = g
    np.testing.assert_allclose(discounted_returns(rewards, ends, 0.99), expected, rtol=1e-4)


def arrays(n=4, obs_dim=3, act_dim=2):
    rng = np.random.default_rng(0)
    return {
        "observations": rng.normal(size=(n, obs_dim)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(n, act_dim)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "next_observations": rng.normal(size=(n, obs_dim)).astype(np.float32),
        "terminals": np.zeros(n, bool),
        "timeouts": np.zeros(n, bool),
    }


def test_nan_rewards_rejected_with_field_and_row():
    a = arrays()
    a["rewards"][2] = np.nan
    with pytest.raises(DatasetError, match=r"data\.npz: field 'rewards'.*row 2.*Fix"):
        Dataset.from_arrays(a, source="data.npz")


def test_mismatched_lengths_rejected():
    a = arrays()
    a["actions"] = a["actions"][:3]
    with pytest.raises(DatasetError, match=r"field 'actions': has 3 rows but observations has 4"):
        Dataset.from_arrays(a, source="data.npz")


def test_actions_outside_action_space_rejected():
    a = arrays()
    a["actions"][1, 0] = 1.5
    with pytest.raises(DatasetError, match=r"field 'actions': 1 rows lie outside.*row 1"):
        Dataset.from_arrays(a, source="data.npz", action_low=-1.0, action_high=1.0)


def test_missing_field_and_bad_flags_rejected():
    a = arrays()
    del a["next_observations"]
    with pytest.raises(DatasetError, match="'next_observations': missing"):
        Dataset.from_arrays(a)
    a = arrays()
    a["terminals"] = np.array([0, 2, 0, 0])
    with pytest.raises(DatasetError, match="'terminals'"):
        Dataset.from_arrays(a)


def test_native_round_trip(tmp_path):
    ds = Dataset.from_arrays(arrays())
    path = save_native(ds, tmp_path / "d.npz", meta={"task": "hopper"})
    loaded, meta = load_native(path)
    assert meta == {"task": "hopper"}
    for name, value in ds.arrays().items():
        np.testing.assert_array_equal(getattr(loaded, name), value)


def test_native_rejects_broken_file(tmp_path):
    path = tmp_path / "bad.npz"
    path.write_bytes(b"not a zip archive")
    with pytest.raises(DatasetError, match=r"bad\.npz"):
        load_native(path)


def test_next_actions_follow_the_episode_and_stand_in_at_its_end():
    ds = make([0, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 0, 0, 1])
    ds = Dataset.from_arrays(ds.arrays() | {"actions": np.arange(5, dtype=np.float32)[:, None]})
    np.testing.assert_array_equal(ds.next_actions()[:, 0], [1, 1, 3, 4, 4])


def test_hold_out_takes_whole_evenly_spaced_episodes():
    # 10 episodes of 3 steps, each ending in a terminal; the reward is the episode's index.
    episode = np.repeat(np.arange(10), 3)
    ds = make(episode, np.tile([0, 0, 1], 10), np.zeros(30))
    rest, held = ds.hold_out(3)  # episodes 0, round(4.5) = 4 and 9
    np.testing.assert_array_equal(held.rewards, np.repeat([0, 4, 9], 3))
    np.testing.assert_array_equal(rest.rewards, np.repeat([1, 2, 3, 5, 6, 7, 8], 3))
    assert len(held.episodes()) == 3 and len(rest.episodes()) == 7
    assert ds.hold_out(0)[1].rewards.size == 0
    with pytest.raises(ValueError, match="cannot hold out 10 of its 10 episodes"):
        ds.hold_out(10)
