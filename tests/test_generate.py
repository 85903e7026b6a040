"""Behaviour-policy files, dataset generation and caching, task names, reward transforms."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from o2o.cli import main
from o2o.data.formats import load_dataset
from o2o.data.generate import SampledActions, dataset_from_replay, make_dataset, rollout
from o2o.envs import tasks
from o2o.envs.tasks import SPARSE_TO_MINUS_ONE, RewardTransform, get_task, parse_task
from o2o.nets.policies import TanhGaussian
from o2o.train.pipeline import default_config, replay_transitions, train
from o2o.zoo import expert_note, load_policy, save_policy, save_policy_chain


def _write_policy(path, obs_dim=11, act_dim=3, bias=0.0, seed=0):
    module = TanhGaussian(act_dim, (16, 16))
    params = module.init(jax.random.key(seed), np.zeros((1, obs_dim), np.float32))
    params = jax.tree.map(lambda x: x + bias, params)
    meta = {"hidden_dims": [16, 16], "action_dim": act_dim, "task": "hopper"}
    save_policy(path, params, meta)
    return params


@pytest.fixture
def zoo(tmp_path, monkeypatch):
    """A zoo of tiny hopper policies and an empty dataset cache, both under tmp_path."""
    monkeypatch.setenv("O2O_ZOO_DIR", str(tmp_path / "zoo"))
    monkeypatch.setenv("O2O_DATA_DIR", str(tmp_path / "cache"))
    for i, level in enumerate(("random", "medium", "expert")):
        _write_policy(tmp_path / "zoo" / f"hopper-{level}.npz", seed=i)
    return tmp_path


def test_policy_file_round_trip(tmp_path):
    params = _write_policy(tmp_path / "p.npz", bias=0.1)
    policy = load_policy(tmp_path / "p.npz")
    assert policy.meta["action_dim"] == 3
    obs = np.random.default_rng(0).normal(size=(5, 11)).astype(np.float32)
    mean, _ = TanhGaussian(3, (16, 16)).apply(params, obs)
    np.testing.assert_allclose(
        policy.act(obs, jax.random.key(0), True), np.tanh(mean), rtol=1e-5, atol=1e-6
    )
    sampled = policy.act(obs, jax.random.key(1))
    assert sampled.shape == (5, 3) and np.all(np.abs(sampled) <= 1)
    assert not np.allclose(sampled, policy.act(obs, jax.random.key(2)))


def test_damaged_policy_file_is_reported(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"bad\.npz: not a valid o2o policy file"):
        load_policy(tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError, match=r"train_zoo\.py"):
        load_policy(tmp_path / "missing.npz")


def test_rollout_is_deterministic_and_well_formed(zoo, capsys):
    task = get_task("hopper")
    act = SampledActions(load_policy(zoo / "zoo" / "hopper-medium.npz"))
    a = rollout(task, act, 600, seed=3, source="a", num_envs=4)
    said = capsys.readouterr()  # not a terminal: the progress in lines, as a log file sees it
    assert "collecting a: 60/600 transitions" in said.out + said.err
    assert "collecting a: 600/600 transitions" in said.out + said.err
    b = rollout(task, act, 600, seed=3, source="b", num_envs=4)
    c = rollout(task, act, 600, seed=4, source="c", num_envs=4)
    assert len(a) == 600
    for name, x in a.arrays().items():
        np.testing.assert_array_equal(x, b.arrays()[name])
    assert not np.array_equal(a.observations, c.observations)
    # Each of the 4 streams is contiguous: inside an episode next_obs[t] == obs[t+1].
    ends = a.episode_ends
    assert not a.terminals[~ends].any() and not a.timeouts[~ends].any()
    inside = ~ends[:-1]
    np.testing.assert_array_equal(a.next_observations[:-1][inside], a.observations[1:][inside])
    # An untrained hopper falls: real terminals, and stream ends are episode ends.
    assert a.terminals.sum() > 0 and ends[[149, 299, 449, 599]].all()
    # Processes sharing the environments (2, 1 and 1 of them) draw exactly the same data.
    d = rollout(task, act, 600, seed=3, source="d", num_envs=4, workers=3)
    for name, x in a.arrays().items():
        np.testing.assert_array_equal(x, d.arrays()[name])


def test_importing_o2o_starts_no_jax_backend():
    """Collection workers set JAX to the CPU after their imports; an import that made an array
    (a module-level constant) would start the default backend first, a GPU in each worker."""
    code = "import o2o.agents, o2o.cli, o2o.data.generate, o2o.sweep, o2o.train.pipeline"
    env = os.environ | {"JAX_PLATFORMS": "no-such-platform"}  # starting any backend fails
    subprocess.run([sys.executable, "-c", code], env=env, check=True)


def test_make_dataset_caches_and_composes_levels(zoo, capsys):
    medium, path = make_dataset("hopper-medium", size=300, seed=0)
    again, path_again = make_dataset("hopper-medium", size=300, seed=0)
    assert path == path_again and path.exists()
    np.testing.assert_array_equal(medium.observations, again.observations)
    # The file says which JAX drew it: another version may differ in a last bit (generate.py).
    assert load_dataset(path)[1]["jax"] == jax.__version__
    mixed, _ = make_dataset("hopper-medium-expert", size=300, seed=0)
    expert, _ = make_dataset("hopper-expert", size=300, seed=0)
    assert len(mixed) == 600
    np.testing.assert_array_equal(mixed.actions[:300], medium.actions)
    np.testing.assert_array_equal(mixed.actions[300:], expert.actions)
    # A retrained zoo policy changes the cache key, so stale data is never reused.
    _write_policy(zoo / "zoo" / "hopper-medium.npz", seed=7)
    assert make_dataset("hopper-medium", size=300, seed=0)[1] != path


def test_dataset_make_and_info_cli(zoo, capsys):
    main(["dataset", "make", "hopper-random", "--size", "400", "--out", str(zoo / "r.npz")])
    out = capsys.readouterr().out
    assert "hopper-random" in out and "400" in out and str(zoo / "r.npz") in out
    md = zoo / "table.md"
    main(
        [
            "dataset",
            "info",
            str(zoo / "r.npz"),
            "hopper-random",
            "--size",
            "400",
            "--markdown",
            str(md),
        ]
    )
    lines = md.read_text().splitlines()
    assert lines[0].startswith("Made by `o2o dataset info ")
    rows = lines[4:]
    assert len(rows) == 2 and all("| 400 |" in row for row in rows)
    assert rows[0].split("|")[2:] == rows[1].split("|")[2:]  # same data, same score


def test_weak_zoo_expert_is_named_as_such(zoo, capsys):
    expert = load_policy(zoo / "zoo" / "hopper-expert.npz")
    weak = expert.meta | {"env_steps": 230000, "rollout_normalized_score": 44.0}
    save_policy(zoo / "zoo" / "hopper-expert.npz", expert.params, weak)
    main(["dataset", "make", "hopper-expert", "--size", "200"])
    out = " ".join(capsys.readouterr().err.split())  # notes go to the console (stderr)
    assert "o2o's hopper expert (SAC, 230,000 steps) scores 44.0 normalised" in out
    assert "not D4RL's" in out
    main(["dataset", "info", "hopper-medium-expert", "--size", "200"])
    assert "scores 44.0 normalised" in capsys.readouterr().err
    main(["dataset", "info", "hopper-medium", "--size", "200"])
    assert "D4RL's experts" not in capsys.readouterr().err
    save_policy(
        zoo / "zoo" / "hopper-expert.npz", expert.params, weak | {"rollout_normalized_score": 95.0}
    )
    assert expert_note("hopper", "expert") is None


def test_medium_replay_requires_the_shipped_chain(zoo):
    with pytest.raises(FileNotFoundError, match=r"hopper-medium-replay\.npz.*train_zoo\.py"):
        make_dataset("hopper-medium-replay")


def test_medium_replay_recollects_the_buffer_snapshot_by_snapshot(zoo, capsys):
    # Warm-up: uniform actions to step 50; then the snapshot nearest to each step: two policies
    # saturated at +1 (steps 0 and 100) until step 150, then one saturated at -1 (step 200).
    module = TanhGaussian(3, (16, 16))
    base = module.init(jax.random.key(0), np.zeros((1, 11), np.float32))
    chain = [jax.tree.map(lambda x, b=b: x * 0 + b, base) for b in (5.0, 5.0, -5.0)]
    meta = {"hidden_dims": [16, 16], "action_dim": 3, "buffer_size": 300, "start_steps": 50}
    save_policy_chain(zoo / "zoo" / "hopper-medium-replay.npz", chain, [0, 100, 200], meta)
    data, _ = make_dataset("hopper-medium-replay", size=999)
    assert "--size 999 is ignored" in capsys.readouterr().err
    assert len(data) == 300  # the buffer's own size
    warmup = data.actions[:50]
    assert np.abs(warmup).max() < 1 and warmup.std() > 0.4  # uniform on [-1, 1]
    assert (data.actions[50:150] > 0.99).all() and (data.actions[150:] < -0.99).all()
    # One stream, as the training run: rows continue each other inside episodes.
    inside = ~data.episode_ends[:-1]
    np.testing.assert_array_equal(
        data.next_observations[:-1][inside], data.observations[1:][inside]
    )
    again, _ = make_dataset("hopper-medium-replay")
    np.testing.assert_array_equal(again.actions, data.actions)


def test_dataset_from_replay_marks_time_limit_cuts():
    # Two episodes: one cut by a time limit after 3 steps, one ending in a terminal.
    obs = np.arange(7, dtype=np.float32)[:, None]
    next_obs = obs + 1
    next_obs[2] = 100.0  # the environment was reset after row 2 (time limit)
    masks = np.array([1, 1, 1, 1, 1, 1, 0], np.float32)
    replay = {
        "observations": obs,
        "actions": np.zeros((7, 1), np.float32),
        "rewards": np.ones(7, np.float32),
        "next_observations": next_obs,
        "masks": masks,
    }
    data = dataset_from_replay(replay, "replay")
    np.testing.assert_array_equal(data.timeouts, [0, 0, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(data.terminals, [0, 0, 0, 0, 0, 0, 1])
    np.testing.assert_array_equal(data.episode_returns(), [3, 4])


def test_task_names_and_levels():
    assert parse_task("hopper") == (get_task("hopper"), None)
    assert parse_task("walker2d-medium-replay")[1] == "medium-replay"
    with pytest.raises(ValueError, match=r"unknown dataset level .mediocre.*medium-expert"):
        parse_task("hopper-mediocre")
    with pytest.raises(ValueError, match="names a task, not a dataset"):
        make_dataset("hopper")


def test_reward_transforms():
    np.testing.assert_array_equal(SPARSE_TO_MINUS_ONE(np.array([0.0, 1.0])), [-1.0, 0.0])
    assert RewardTransform(2.0, 0.5)(3.0) == 6.5


def test_online_rewards_are_transformed_but_returns_are_not(tmp_path, monkeypatch):
    pendulum = tasks.Task(
        "pendulum-shifted",
        "Pendulum-v1",
        -1200.0,
        -150.0,
        "test",
        200,
        reward_transform=RewardTransform(-1.0, 1.0),  # Pendulum's r <= 0 becomes 1 - r >= 1
    )
    monkeypatch.setitem(tasks.TASKS, pendulum.name, pendulum)
    config = default_config(
        "sac",
        task=pendulum.name,
        online_steps=20,
        eval_interval=20,
        eval_episodes=1,
        out=tmp_path / "run",
    )
    small = dataclasses.replace(config.agent, hidden_dims=(8,), batch_size=4, start_steps=10)
    train(dataclasses.replace(config, agent=small))
    metrics = (tmp_path / "run" / "summary.json").read_text()
    assert '"final_return": -' in metrics  # evaluation stays in the environment's units
    # Q-bias compares Q with Monte-Carlo returns of the rewards Q learned (>= 1 per step),
    # reported divided by the transform's scale (-1), i.e. in the environment's reward scale.
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["q_mc_mean"] < -50 and last["return_mean"] < 0
    # The agent learned from 1 - r; an exported buffer is back in the environment's units.
    seen = replay_transitions(tmp_path / "run")["rewards"]
    main(["dataset", "from-run", str(tmp_path / "run"), str(tmp_path / "replay.hdf5")])
    exported, meta = load_dataset(tmp_path / "replay.hdf5")
    assert len(exported) == 20 and meta["task"] == "pendulum-shifted"
    assert (exported.rewards <= 0).all() and exported.rewards.std() > 0  # Pendulum's -cost
    np.testing.assert_allclose(seen, 1 - exported.rewards, rtol=1e-5)


def test_generated_dataset_trains_rlpd(zoo):
    out = zoo / "run"
    main(
        [
            "train",
            "--algo",
            "rlpd",
            "--task",
            "hopper-medium",
            "--online-steps",
            "12",
            "--eval-interval",
            "12",
            "--eval-episodes",
            "1",
            "--agent.start-steps",
            "10",
            "--agent.utd-ratio",
            "2",
            "--agent.num-critics",
            "2",
            "--agent.hidden-dims",
            "8",
            "--agent.batch-size",
            "8",
            "--dataset-size",
            "200",
            "--out",
            str(out),
        ]
    )
    assert (out / "summary.json").exists()
    assert len(list((zoo / "cache").glob("hopper-medium-200-seed0-*.npz"))) == 1
