"""Replay buffer ring semantics and the mixed offline/online sampler."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from o2o.data.buffer import MixedSampler, ReplayBuffer


def test_ring_buffer_wraps_and_keeps_latest():
    buf = ReplayBuffer.create({"x": np.float32(0)}, capacity=3)
    add = jax.jit(lambda b, x: b.add({"x": x}))
    for i in range(5):
        buf = add(buf, jnp.float32(i))
    assert int(buf.size) == 3
    assert sorted(np.asarray(buf.data["x"]).tolist()) == [2.0, 3.0, 4.0]
    sample = buf.sample(jax.random.key(0), 100)["x"]
    assert set(np.asarray(sample).tolist()) <= {2.0, 3.0, 4.0}


def test_partially_filled_buffer_samples_only_valid_rows():
    buf = ReplayBuffer.create({"x": np.float32(0)}, capacity=10)
    buf = buf.add({"x": 7.0}).add({"x": 8.0})
    sample = np.asarray(buf.sample(jax.random.key(1), 200)["x"])
    assert set(sample.tolist()) == {7.0, 8.0}


def sources(n=1000):
    offline = ReplayBuffer.from_arrays({"src": np.ones(n, np.float32)})
    online = ReplayBuffer.from_arrays({"src": np.zeros(n, np.float32)})
    return offline, online


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 0.9, 1.0])
def test_sampler_ratio_is_exact(ratio):
    offline, online = sources()
    sampler = MixedSampler.create(offline, ratio)
    sample = jax.jit(lambda s, k: s.sample(k, online, 256, jnp.int32(0)))
    batch = sample(sampler, jax.random.key(0))
    assert float(batch["src"].sum()) == round(ratio * 256)


def test_sampler_ratio_change_does_not_recompile():
    offline, online = sources()
    sample = jax.jit(lambda s, k: s.sample(k, online, 100, jnp.int32(0)))
    a = sample(MixedSampler.create(offline, 0.3), jax.random.key(0))
    b = sample(MixedSampler.create(offline, 0.7), jax.random.key(0))
    assert (float(a["src"].sum()), float(b["src"].sum())) == (30.0, 70.0)
    assert sample._cache_size() == 1


def test_sampler_schedule_over_steps():
    offline, online = sources()
    sampler = MixedSampler.create(offline, schedule=optax.linear_schedule(1.0, 0.0, 100))
    counts = [
        float(sampler.sample(jax.random.key(0), online, 100, jnp.int32(step))["src"].sum())
        for step in (0, 50, 100, 200)
    ]
    assert counts == [100.0, 50.0, 0.0, 0.0]


MIXES = {
    "fixed": dict(offline_ratio=0.5),
    "proportional": dict(proportional=True),  # 1000 offline rows, 300 online: 10/13 offline
    "linear": dict(offline_ratio=0.8, schedule=optax.linear_schedule(0.8, 0.0, 100)),
}


@pytest.mark.parametrize("horizon", [1, 3])
@pytest.mark.parametrize("mix", sorted(MIXES))
def test_every_minibatch_of_a_utd_block_mixes_at_the_ratio(mix, horizon):
    """RLPD interleaves dataset and online rows within each minibatch: with UTD 20, every
    critic minibatch and the actor's (the last) hold round(ratio * batch) dataset rows, not
    the first ten minibatches all of the dataset and the last ten all online."""

    def rows(n: int, src: float) -> dict[str, np.ndarray]:
        fields = ("rewards", "masks", "ends", "actions", "next_observations")
        return {"src": np.full(n, src, np.float32)} | {k: np.zeros(n, np.float32) for k in fields}

    offline = ReplayBuffer.from_arrays(rows(1000, 1.0))
    online = ReplayBuffer.from_arrays(rows(300, 0.0)).grown(2000)
    sampler = MixedSampler.create(offline, **MIXES[mix])
    step = jnp.int32(25)
    batch = jax.jit(
        lambda s: s.sample_minibatches(jax.random.key(0), online, 20, 16, step, horizon)
    )(sampler)
    src = batch["src"]  # windows carry their first step's field
    assert src.shape == (20, 16)
    expected = float(sampler.ratio(step, online.size)) * 16
    per_minibatch = np.asarray(src.sum(1))
    assert np.all(np.abs(per_minibatch - expected) <= 1), (expected, per_minibatch)
    assert abs(float(src[-1].sum()) - expected) <= 1  # the actor's minibatch too


def test_sampler_without_offline_data_uses_online_only():
    _, online = sources()
    sampler = MixedSampler.create(None, 0.5)
    batch = sampler.sample(jax.random.key(0), online, 64, jnp.int32(0))
    assert float(batch["src"].sum()) == 0.0


def test_sampler_rejects_bad_ratio():
    offline, _ = sources()
    with pytest.raises(ValueError, match="offline_ratio"):
        MixedSampler.create(offline, 1.5)


@pytest.mark.parametrize("n_added", [2, 5])
def test_grown_buffer_keeps_transitions_oldest_first(n_added):
    buf = ReplayBuffer.create({"x": np.float32(0)}, capacity=3)
    for i in range(n_added):
        buf = buf.add({"x": float(i)})
    big = buf.grown(6)
    kept = list(range(max(0, n_added - 3), n_added))
    assert int(big.size) == len(kept) and big.capacity == 6
    np.testing.assert_array_equal(np.asarray(big.data["x"][: len(kept)]), kept)
    big = big.add({"x": 9.0})
    assert float(big.data["x"][len(kept)]) == 9.0


def test_sampler_proportional_to_sizes():
    offline = ReplayBuffer.from_arrays({"src": np.ones(300, np.float32)})
    online = ReplayBuffer.create({"src": np.float32(0)}, capacity=1000)
    sampler = MixedSampler.create(offline, proportional=True)
    sample = jax.jit(lambda buf: sampler.sample(jax.random.key(0), buf, 100, jnp.int32(0)))
    assert float(sample(online)["src"].sum()) == 100.0  # no online data yet
    online = ReplayBuffer.from_arrays({"src": np.zeros(100, np.float32)}).grown(1000)
    assert float(sample(online)["src"].sum()) == 75.0  # 300 / (300 + 100)
    with pytest.raises(ValueError, match="not both"):
        MixedSampler.create(offline, schedule=optax.constant_schedule(0.5), proportional=True)


def window_buffer() -> ReplayBuffer:
    """A ring of 8 rows after 10 insertions (t = 0..9; rows hold t = 2..9, t = 8 and 9 wrapped
    to rows 0 and 1): a terminal at t = 3, a timeout at t = 6, the episode from t = 7 still
    running. Observation t, action (t, 10 + t), reward t + 1, next observation t + 0.5."""
    example = {
        "observations": np.zeros(1, np.float32),
        "actions": np.zeros(2, np.float32),
        "rewards": np.float32(0),
        "next_observations": np.zeros(1, np.float32),
        "masks": np.float32(0),
        "ends": np.float32(0),
    }
    buf = ReplayBuffer.create(example, capacity=8)
    for t in range(10):
        buf = buf.add(
            {
                "observations": [t],
                "actions": [t, 10 + t],
                "rewards": t + 1,
                "next_observations": [t + 0.5],
                "masks": float(t != 3),
                "ends": float(t in (3, 6)),
            }
        )
    return buf


# Window start t -> (valid, rewards, mask at the chunk's end, next observation), horizon 3.
WINDOWS = {
    2: ([1, 1, 0], [3, 4, 0], 0, 3.5),  # the terminal at t = 3 ends it: no bootstrap
    3: ([1, 0, 0], [4, 0, 0], 0, 3.5),
    4: ([1, 1, 1], [5, 6, 7], 1, 6.5),  # ends at its last step, a timeout: bootstrap
    5: ([1, 1, 0], [6, 7, 0], 1, 6.5),
    6: ([1, 0, 0], [7, 0, 0], 1, 6.5),
    7: ([1, 1, 1], [8, 9, 10], 1, 9.5),  # across the ring's wrap-around (rows 7, 0, 1)
    8: ([1, 1, 0], [9, 10, 0], 1, 9.5),  # t = 10 was never written (its row holds t = 2)
    9: ([1, 0, 0], [10, 0, 0], 1, 9.5),
}


def test_windows_by_hand_with_terminal_timeout_and_wrap_around():
    batch = jax.jit(lambda b: b.sample(jax.random.key(0), 400, horizon=3))(window_buffer())
    starts = np.asarray(batch["observations"][:, 0]).astype(int)
    assert set(starts.tolist()) == set(WINDOWS)  # every stored row starts windows, no other
    for t, (valid, rewards, mask, next_obs) in WINDOWS.items():
        row = int(np.flatnonzero(starts == t)[0])
        np.testing.assert_array_equal(batch["valid"][row], valid)
        np.testing.assert_array_equal(batch["rewards"][row], rewards)
        assert float(batch["masks"][row]) == mask
        assert float(batch["next_observations"][row, 0]) == next_obs
        expected = [[s, 10 + s] for s in range(t, min(t + 3, 10))]
        np.testing.assert_array_equal(batch["actions"][row, : len(expected)], expected)


def test_windows_through_the_mixed_sampler_and_without_episode_ends():
    online = window_buffer()
    offline = online.replace(data=online.data | {"observations": online.data["observations"] + 100})
    sampler = MixedSampler.create(offline, 0.25)
    batch = sampler.sample_minibatches(jax.random.key(0), online, 2, 8, jnp.int32(0), 3)
    assert batch["actions"].shape == (2, 8, 3, 2) and batch["valid"].shape == (2, 8, 3)
    from_offline = np.asarray(batch["observations"][..., 0]) >= 100
    assert from_offline.sum() == 4  # round(0.25 * 16)
    no_ends = ReplayBuffer.from_arrays({"x": np.zeros(4, np.float32)})
    with pytest.raises(ValueError, match="ends"):
        no_ends.sample(jax.random.key(0), 4, horizon=2)
