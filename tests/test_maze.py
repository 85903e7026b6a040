"""PointMaze tasks: the evaluation env, the waypoint planner and its D4RL-style datasets."""

import json

import numpy as np
import pytest

pytest.importorskip("gymnasium_robotics")

from o2o.cli import main
from o2o.data.generate import make_dataset
from o2o.envs.maze import COLLECT_EPISODE_STEPS, GOAL_RADIUS
from o2o.envs.tasks import TASKS, parse_task

UMAZE = TASKS["pointmaze-umaze"]


@pytest.fixture(scope="module")
def umaze_data():
    return UMAZE.collect("planner", 4000, seed=0)


def _teleport(env, xy):
    env.unwrapped.point_env.set_state(np.asarray(xy, float), np.zeros(2))


def test_names_levels_and_score_scale():
    assert parse_task("pointmaze-umaze") == (UMAZE, "planner")
    assert parse_task("pointmaze-large-planner") == (TASKS["pointmaze-large"], "planner")
    with pytest.raises(ValueError, match="levels: planner"):
        parse_task("pointmaze-medium-expert")
    assert UMAZE.success_metric and UMAZE.max_episode_steps == 300
    assert (UMAZE.normalize(0.0), UMAZE.normalize(1.0)) == (0.0, 100.0)
    np.testing.assert_array_equal(UMAZE.reward_transform(np.array([0.0, 1.0])), [-1.0, 0.0])


def test_eval_env_has_fixed_goal_and_noisy_start():
    env = UMAZE.make_env()
    planner = UMAZE.planner()
    assert env.observation_space.shape == (4,) and env.action_space.shape == (2,)
    np.testing.assert_array_equal(env.action_space.low, [-1, -1])
    np.testing.assert_array_equal(env.action_space.high, [1, 1])
    starts = []
    for seed in range(3):
        obs, _ = env.reset(seed=seed)
        assert obs.shape == (4,)
        np.testing.assert_array_equal(env.unwrapped.goal, planner.centre(UMAZE.goal_cell))
        assert np.all(np.abs(obs[:2] - planner.centre(UMAZE.start_cell)) <= 0.25)
        starts.append(obs[:2])
    assert not np.allclose(starts[0], starts[1])
    env.close()


def test_reward_and_termination_at_the_goal():
    env = UMAZE.make_env()
    env.reset(seed=0)
    goal = env.unwrapped.goal
    _teleport(env, goal + np.array([0.6, 0.0]))
    _, reward, terminated, _, info = env.step(np.zeros(2))
    assert (reward, terminated, info["success"]) == (0.0, False, False)
    _teleport(env, goal + np.array([0.3, 0.0]))
    _, reward, terminated, _, info = env.step(np.zeros(2))
    assert (reward, terminated, info["success"]) == (1.0, True, True)
    env.close()


def _episode(env, policy):
    """Rewards of one episode from the seed-0 start, and whether it terminated."""
    obs, _ = env.reset(seed=0)
    rewards = []
    while True:
        obs, reward, terminated, truncated, _ = env.step(policy(obs))
        rewards.append(reward)
        if terminated or truncated:
            return rewards, terminated


def test_planner_reaches_the_goal_and_standing_still_does_not():
    env = UMAZE.make_env()
    planner = UMAZE.planner()
    rewards, terminated = _episode(env, lambda obs: planner.action(obs, UMAZE.goal_cell))
    assert terminated and sum(rewards) == rewards[-1] == 1.0 and len(rewards) > 50
    rewards, terminated = _episode(env, lambda obs: np.zeros(2))
    assert not terminated and sum(rewards) == 0.0 and len(rewards) == UMAZE.max_episode_steps
    env.close()


def test_collect_is_labelled_for_the_eval_goal(umaze_data):
    data = umaze_data
    goal = UMAZE.planner().centre(UMAZE.goal_cell)
    assert data.observations.shape == (4000, 4) and data.actions.shape == (4000, 2)
    assert np.all(np.abs(data.actions) <= 1)
    assert set(np.unique(data.rewards)) == {0.0, 1.0}
    near = np.linalg.norm(data.next_observations[:, :2] - goal, axis=1) <= GOAL_RADIUS
    np.testing.assert_array_equal(data.rewards == 1, near)
    np.testing.assert_array_equal(data.terminals, near)
    assert not (data.terminals & data.timeouts).any()
    # Episodes end only at a goal or after the collection time limit; never from the goal.
    assert not (data.broken & ~data.terminals & ~data.timeouts).any()
    assert data.timeouts.any()
    lengths = np.diff(np.flatnonzero(np.r_[True, data.episode_ends[:-1]]))
    ends = np.flatnonzero(data.episode_ends)[:-1]
    np.testing.assert_array_equal(lengths[data.timeouts[ends]], COLLECT_EPISODE_STEPS)
    starts = np.r_[0, ends + 1]
    assert np.all(np.linalg.norm(data.observations[starts, :2] - goal, axis=1) > GOAL_RADIUS)


def test_collect_matches_the_eval_env_dynamics(umaze_data):
    env = UMAZE.make_env()
    env.reset(seed=0)
    for t in np.r_[np.flatnonzero(umaze_data.terminals)[:2], 10, 500]:
        obs = umaze_data.observations[t].astype(float)
        env.unwrapped.point_env.set_state(obs[:2], obs[2:])
        next_obs, reward, terminated, _, _ = env.step(umaze_data.actions[t])
        np.testing.assert_allclose(next_obs, umaze_data.next_observations[t], atol=1e-5)
        assert (reward, terminated) == (umaze_data.rewards[t], umaze_data.terminals[t])
    env.close()


def test_collect_is_deterministic(umaze_data):
    again = UMAZE.collect("planner", 4000, seed=0)
    for name, value in umaze_data.arrays().items():
        np.testing.assert_array_equal(getattr(again, name), value)
    other = UMAZE.collect("planner", 4000, seed=1)
    assert not np.array_equal(other.observations, umaze_data.observations)
    with pytest.raises(ValueError, match="unknown dataset level"):
        UMAZE.collect("medium", 10, seed=0)


def test_make_dataset_caches_a_bare_task_name(tmp_path, monkeypatch):
    monkeypatch.setenv("O2O_DATA_DIR", str(tmp_path))
    data, path = make_dataset("pointmaze-umaze", 300)
    assert path.name.startswith("pointmaze-umaze-planner-300-seed0") and path.exists()
    assert len(data) == 300 and make_dataset("pointmaze-umaze-planner", 300)[1] == path


@pytest.mark.parametrize(
    ("algo", "recipe"),
    [
        ("rlpd", dict(backup_entropy=False, num_min_critics=1, critic_layer_norm=True)),
        ("cql", dict(cql_lagrange=True, cql_target_action_gap=0.8, cql_max_target_backup=True)),
    ],
)
def test_train_picks_the_navigation_recipe_on_pointmaze(
    algo, recipe, tmp_path, monkeypatch, capsys
):
    """On a sparse navigation task `o2o train` uses the agents' AntMaze recipes, says so, and
    names the preset in config.json; --agent.* flags still override its fields."""
    monkeypatch.setenv("O2O_DATA_DIR", str(tmp_path / "data"))
    out = tmp_path / "run"
    flags = (
        f"--algo {algo} --task pointmaze-umaze --dataset-size 600 --online-steps 4 "
        f"--eval-interval 4 --eval-episodes 1 --agent.start-steps 2 --agent.utd-ratio 1 "
        f"--agent.hidden-dims 8 8 --agent.batch-size 8 --out {out}"
    )
    main(["train", *flags.split()])
    assert f"{algo}: the 'navigation' recipe for pointmaze-umaze" in capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    assert config["preset"] == "navigation"
    assert {k: config["agent"][k] for k in recipe} == recipe
    assert config["agent"]["hidden_dims"] == [8, 8]
