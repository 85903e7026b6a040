"""OGBench manipulation: data drawn with OGBench's oracles in its own layout, relabelled for
single tasks exactly as OGBench's loader relabels them (needs the `ogbench` extra)."""

import dataclasses

import numpy as np
import pytest

from o2o.envs.manipulation import ManipulationTask, collect_episodes, make_raw_dataset
from o2o.envs.tasks import parse_task

ogbench = pytest.importorskip("ogbench", reason="the ogbench extra is not installed")

STEPS = 61  # short collection episodes: the recipe's 1,001 steps cost seconds each


def test_single_task_names_give_ogbench_envs_levels_and_timing():
    task, level = parse_task("cube-double-noisy-singletask-task5-post")
    assert isinstance(task, ManipulationTask) and level == "noisy"
    assert (task.env_id, task.success_timing, task.max_episode_steps) == (
        "cube-double-singletask-task5-v0",
        "post",
        500,
    )
    default, level = parse_task("puzzle-3x3-play-singletask")
    assert (default.task_id, default.success_timing, level) == (4, "pre", "play")
    assert parse_task("scene-play")[0].env_id == "scene-singletask-task2-v0"
    assert task.family == "manipulation" and task.failure_reward is None
    assert task.score(np.array([-3.0, 0.0]), np.array([False, True])) == 50.0


def test_collection_is_seeded_per_episode_whatever_the_split_into_workers():
    both = collect_episodes("cube-single", "noisy", seed=3, split=0, episodes=range(2), steps=STEPS)
    second = collect_episodes("cube-single", "noisy", 3, 0, range(1, 2), steps=STEPS)
    for key in ("observations", "actions", "qpos", "qvel"):
        np.testing.assert_array_equal(both[key][STEPS:], second[key])
        assert both[key].dtype == np.float32 and len(both[key]) == 2 * STEPS
    assert both["terminals"].sum() == 2 and both["terminals"][STEPS - 1]
    other_seed = collect_episodes("cube-single", "noisy", 4, 0, range(1), steps=STEPS)
    assert not np.array_equal(other_seed["actions"], both["actions"][:STEPS])
    assert np.abs(both["actions"]).max() <= 1.0


@pytest.mark.parametrize(
    "suite, name",
    [
        ("scene", "scene-play-singletask-task2-v0"),
        ("puzzle-3x3", "puzzle-3x3-play-singletask-task4-v0"),
        ("cube-double", "cube-double-play-singletask-task1-v0"),
    ],
)
def test_relabelling_matches_ogbench_loader(tmp_path, monkeypatch, suite, name):
    """OGBench's own `make_env_and_datasets` reads o2o's file and relabels it for the task;
    o2o's relabelling of the same file gives the same transitions, rewards and masks."""
    monkeypatch.setenv("O2O_DATA_DIR", str(tmp_path))
    train_path, val_path = make_raw_dataset(suite, "play", 2, seed=0, workers=1, steps=STEPS)
    assert val_path.exists()
    _, train, _ = ogbench.make_env_and_datasets(name, dataset_path=str(train_path))
    task = parse_task(name.removesuffix("-v0"))[0]
    with np.load(train_path) as npz:
        ours = task.relabel(dict(npz), str(train_path))
    assert len(ours) == 2 * (STEPS - 1)
    np.testing.assert_array_equal(ours.observations, train["observations"])
    np.testing.assert_array_equal(ours.next_observations, train["next_observations"])
    np.testing.assert_array_equal(ours.actions, train["actions"])
    np.testing.assert_array_equal(ours.rewards, train["rewards"])
    np.testing.assert_array_equal(1.0 - ours.terminals, train["masks"])
    assert ours.rewards.max() <= 0.0


def test_relabelling_ends_episodes_at_success_and_at_the_collection_limit():
    """Rows whose state solves the task are terminal; each collection episode's last kept row
    is a time-out (bootstrapped), its final row (no next observation) dropped."""
    task = dataclasses.replace(parse_task("puzzle-3x3-play-singletask-task4")[0])
    goal = task.goal()["goal_button_states"]
    steps, buttons = 4, np.zeros((8, 9), np.int64)
    buttons[1] = goal  # episode 1, step 1 solves it
    arrays = {
        "observations": np.arange(8 * 3, dtype=np.float32).reshape(8, 3),
        "actions": np.zeros((8, 5), np.float32),
        "terminals": np.tile(np.arange(steps) == steps - 1, 2),
        "qpos": np.zeros((8, 23), np.float32),
        "button_states": buttons,
    }
    data = task.relabel(arrays, "hand-made")
    assert len(data) == 6
    np.testing.assert_array_equal(data.terminals, [0, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(data.timeouts, [0, 0, 1, 0, 0, 1])
    np.testing.assert_array_equal(data.next_observations[:, 0], [3, 6, 9, 15, 18, 21])
    assert data.rewards[1] == 0.0 and data.rewards[0] == float((buttons[0] == goal).sum() - 9)


def test_agents_without_a_manipulation_recipe_say_which_one_they_use(capsys):
    from o2o.train.pipeline import _print_preset, default_config

    _print_preset(default_config("cql", "scene-play-singletask-task2"))
    _print_preset(default_config("bc", "scene-play"))
    _print_preset(default_config("iql", "cube-double-play"))
    out = capsys.readouterr().err  # o2o's console writes to stderr
    assert "cql: no 'manipulation' recipe yet; the default 'locomotion' recipe" in out
    assert "iql: the 'cube-double' recipe for cube-double-play" in out
    assert "bc: the 'default' recipe for scene-play" in out


def test_sparse_variant_rewards_minus_one_until_solved_in_data_and_online():
    """Q-chunking's `--sparse` (its scene-sparse and puzzle-3x3-sparse tables)."""
    task, level = parse_task("puzzle-3x3-play-singletask-task4-sparse-post")
    assert (task.sparse, task.success_timing, level) == (True, "post", "play")
    assert task.name == "puzzle-3x3-singletask-task4-sparse-post" and task.failure_reward == -1.0
    goal = task.goal()["goal_button_states"]
    buttons = np.zeros((4, 9), np.int64)
    buttons[1] = goal
    arrays = {
        "observations": np.zeros((4, 3), np.float32),
        "actions": np.zeros((4, 5), np.float32),
        "terminals": np.arange(4) == 3,
        "qpos": np.zeros((4, 23), np.float32),
        "button_states": buttons,
    }
    np.testing.assert_array_equal(task.relabel(arrays, "hand-made").rewards, [-1, 0, -1])
    env = task.make_env()
    env.reset(seed=0)
    assert env.step(np.zeros(5, np.float32))[1] == -1.0  # dense: minus the unsolved buttons
