"""Cal-QL: the calibration floor on a hand-made batch, its place in the CQL loss, Monte-Carlo
returns of online episodes, the switch rule and the registry."""

import dataclasses

import gymnasium as gym
import jax
import numpy as np
import pytest
from agent_helpers import random_batch

from o2o.agents.calql import CalQL
from o2o.agents.cql import CQL, CQLConfig

OBS = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
ACT = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
TINY = CQLConfig(hidden_dims=(16, 16), batch_size=8, cql_n_actions=3)
critic_loss = jax.jit(lambda agent, b, key: agent.critic_loss(agent.critic.params, b, key))


def test_floor_on_a_hand_made_batch():
    agent = CalQL.create(TINY, OBS, ACT, 0)
    q_pi = np.array([[[1.0, -2.0], [5.0, 0.0]], [[-3.0, 4.0], [0.5, 0.5]]])  # [critics, B, 2N]
    floored, info = agent.bound_policy_values(q_pi, {"mc_returns": np.array([0.0, 1.0])})
    np.testing.assert_array_equal(floored, [[[1, 0], [5, 1]], [[0, 4], [1, 1]]])
    assert float(info["calql_bound_rate"]) == pytest.approx(5 / 8)  # -2, 0; -3, 0.5, 0.5
    with pytest.raises(KeyError, match="mc_returns"):
        agent.bound_policy_values(q_pi, {})


def test_loss_is_cqls_below_the_floor_and_raised_above_it():
    calql, cql = CalQL.create(TINY, OBS, ACT, 0), CQL.create(TINY, OBS, ACT, 0)
    batch, key = random_batch(1), jax.random.key(3)
    low = critic_loss(calql, batch | {"mc_returns": np.full(8, -1e6, np.float32)}, key)
    reference = critic_loss(cql, batch, key)
    np.testing.assert_allclose(low[0], reference[0], rtol=1e-6)
    assert float(low[1]["calql_bound_rate"]) == 0.0
    # Floors far above every Q: each policy proposal's value becomes G, so the log-sum-exp
    # and the penalty grow, and every value counts as clipped.
    high = critic_loss(calql, batch | {"mc_returns": np.full(8, 100.0, np.float32)}, key)
    assert float(high[1]["calql_bound_rate"]) == 1.0
    assert float(high[1]["cql_ood_q"]) > 95 and float(high[0]) > float(reference[0])


def test_switch_rule():
    agent = CalQL.create(TINY, OBS, ACT, 0)
    assert agent.on_switch(TINY) is agent
    switched = agent.on_switch(dataclasses.replace(TINY, cql_alpha_online=0.5))
    assert float(switched.cql_alpha) == 0.5 and isinstance(switched, CalQL)


def test_reward_scale_reaches_rewards_and_the_failure_value():
    """Cal-QL's manipulation recipe multiplies rewards by 10 after the task's transform; the
    sparse task's all-failure value (for Monte-Carlo returns) follows, else no episode would
    match it and failed episodes would get truncated returns."""
    from o2o.envs.tasks import get_task
    from o2o.train.pipeline import learning_task

    task = get_task("cube-single-play-singletask-sparse")
    agent = CalQL.create(dataclasses.replace(TINY, reward_scale=10.0), OBS, ACT, 0)
    learned = learning_task(task, None, agent.needs("offline"))
    assert learned.reward_transform(np.float32(-1.0)) == -10.0
    assert (task.failure_reward, learned.failure_reward) == (-1.0, -10.0)
    assert learning_task(task, None, CalQL.create(TINY, OBS, ACT, 0).needs("online")) is task
