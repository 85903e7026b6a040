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
