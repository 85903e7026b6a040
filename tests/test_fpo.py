"""FPO: GAE and the CFM-ratio surrogate by hand, the offline pre-training losses, the policy
gradient on the bimodal task, and rollouts from vectorised environments."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from agent_helpers import bimodal_batch, bimodal_reward, bimodal_scores, np_, optimised, sgd
from gymnasium.spaces import Box

from o2o.agents.fpo import FPO, FPOConfig, gae
from o2o.envs.tasks import get_task
from o2o.logging import RunLogger
from o2o.nets.policies import flow_matching_error
from o2o.train.online import RunProgress
from o2o.train.onpolicy import OnPolicyLoop

OBS = Box(-np.inf, np.inf, (3,), np.float32)
ACT = Box(-1.0, 1.0, (2,), np.float32)
TINY = FPOConfig(hidden_dims=(16, 16), value_hidden_dims=(16,), batch_size=8, cfm_samples=3)


def test_gae_by_hand_across_a_terminal_and_a_time_limit():
    # One environment, 5 steps: a terminal at t=1, a time-limit cut at t=3 (bootstraps from
    # its own final state), the rollout ending mid-episode at t=4.
    rewards = np.array([1.0, 2.0, 0.5, -1.0, 3.0])
    values = np.array([0.3, -0.2, 0.7, 1.1, 0.4])
    next_values = np.array([-0.2, 9.0, 1.1, 5.0, 0.6])  # 9.0 is after the terminal: unused
    masks = np.array([1.0, 0.0, 1.0, 1.0, 1.0])
    dones = np.array([0.0, 1.0, 0.0, 1.0, 0.0])
    gamma, lam = 0.9, 0.8
    expected = np.zeros(5)
    following = 0.0
    for t in reversed(range(5)):
        delta = rewards[t] + gamma * masks[t] * next_values[t] - values[t]
        following = delta + gamma * lam * (1 - dones[t]) * following
        expected[t] = following
    assert expected[1] == pytest.approx(2.0 + 0.2)  # the terminal: r - V(s) only
    got = gae(*(jnp.asarray(x[:, None]) for x in (rewards, values, next_values, masks, dones)),
              gamma, lam)  # fmt: skip
    np.testing.assert_allclose(np.asarray(got)[:, 0], expected, rtol=1e-5)


def _minibatch(agent, old_params, seed=0, n=8):
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, 3)).astype(np.float32)
    actions = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
    x0 = rng.normal(size=(n, 3, 2)).astype(np.float32)
    t = rng.uniform(size=(n, 3)).astype(np.float32)
    batch = {
        "observations": obs,
        "actions": actions,
        "advantages": rng.normal(size=n).astype(np.float32),
        "returns": rng.normal(size=n).astype(np.float32),
        "x0": x0,
        "t": t,
    }
    batch["old_losses"] = agent.cfm_losses(old_params, obs, actions, x0, t)
    return batch


def _cfm(agent, params, batch):
    """The CFM error of each (action, pair), averaged over action dims, in float64."""
    obs = np.repeat(batch["observations"][:, None], 3, axis=1)
    act = np.repeat(batch["actions"][:, None], 3, axis=1)
    err = flow_matching_error(agent.actor.apply_fn, params, obs, act, batch["x0"], batch["t"])
    return np_(err).mean(-1)


@pytest.mark.parametrize("average", [True, False])
def test_policy_loss_by_hand(average):
    """ratio = exp(L_old - L_new) (pair losses averaged first, or per pair with the log clipped
    to [-3, 3]); loss = -E min(ratio A, clip(ratio, 1 +- eps) A), A normalised."""
    config = dataclasses.replace(TINY, average_losses_before_exp=average, clip_epsilon=0.2)
    agent = FPO.create(config, OBS, ACT, 0)
    # Old parameters: the current ones moved, so ratios spread on both sides of the clip.
    old = jax.tree.map(lambda p: p + 0.3 * jnp.sign(p), agent.actor.params)
    batch = _minibatch(agent, old)
    loss, info = agent.policy_loss(agent.actor.params, batch)

    new, previous = _cfm(agent, agent.actor.params, batch), _cfm(agent, old, batch)
    if average:
        ratio = np.exp(previous.mean(-1, keepdims=True) - new.mean(-1, keepdims=True))
    else:
        ratio = np.exp(np.clip(previous - new, -3, 3))
    adv = np_(batch["advantages"])
    adv = ((adv - adv.mean()) / (adv.std() + 1e-8))[:, None]
    expected = -np.minimum(ratio * adv, np.clip(ratio, 0.8, 1.2) * adv).mean()
    assert 0 < float(info["clip_fraction"]) < 1  # both branches of the min are exercised
    np.testing.assert_allclose(float(loss), expected, rtol=1e-4)
    np.testing.assert_allclose(float(info["ratio_mean"]), ratio.mean(), rtol=1e-4)


def test_ratio_is_one_at_the_rollout_parameters():
    agent = FPO.create(TINY, OBS, ACT, 0)
    batch = _minibatch(agent, agent.actor.params)
    loss, info = agent.policy_loss(agent.actor.params, batch)
    assert float(info["ratio_min"]) == float(info["ratio_max"]) == 1.0
    assert abs(float(loss)) < 1e-6  # -E[A] of normalised advantages


def test_offline_step_is_flow_bc_and_v_on_monte_carlo_returns():
    agent = FPO.create(TINY, OBS, ACT, 0)
    agent = agent.replace(value=sgd(agent.value))
    batch = jax.tree.map(lambda x: x[0], bimodal_batch(jax.random.key(0), n=8))
    batch["mc_returns"] = jnp.arange(8.0)
    v = np_(agent.value.apply_fn(agent.value.params, batch["observations"]))
    _, info = agent.mc_value_loss(agent.value.params, batch)
    np.testing.assert_allclose(float(info["value_loss"]), ((v - np.arange(8)) ** 2).mean(), 1e-5)

    stepped, info = agent.update_step(batch)
    assert float(info["bc_flow_loss"]) > 0
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), agent.actor.params,
                           stepped.actor.params)  # fmt: skip
    assert all(jax.tree.leaves(changed))
    grads = jax.grad(lambda p: agent.mc_value_loss(p, batch)[0])(agent.value.params)
    expected = jax.tree.map(lambda p, g: p - g, agent.value.params, grads)  # SGD at rate 1
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 stepped.value.params, expected)  # fmt: skip


def test_fpo_finds_both_modes_from_a_flow_cloned_on_uniform_actions():
    """A flow cloned from uniformly random actions rarely hits the two rewarded zones (a
    Gaussian fitted to the rewarded data alone sits between them: tests/test_flow.py); FPO's
    policy gradient on one-step episodes moves the flow's mass into both zones."""
    # ReLU, as the test was calibrated: with the reference's SiLU at this size the mass moves
    # as well, but more slowly (reward 0.80 and 33% in the smaller zone after 30 iterations).
    config = FPOConfig(
        hidden_dims=(64, 64), value_hidden_dims=(32,), value_lr=1e-3, activation="relu"
    )
    agent = FPO.create(config, OBS, ACT, 0)

    def clone(agent, key):
        batch = bimodal_batch(key, explore=1.0)
        return agent.update(batch | {"mc_returns": batch["rewards"]})

    def iteration(agent, key):
        key_obs, key_act = jax.random.split(key)
        obs = jax.random.normal(key_obs, (1, 1024, 3))  # one step of 1024 environments
        actions = agent.sample_actions(obs, key_act)
        ones = jnp.ones((1, 1024))
        rollout = {
            "observations": obs,
            "actions": actions,
            "rewards": bimodal_reward(actions),
            "next_observations": obs,
            "masks": 0 * ones,  # every episode ends after its one step
            "dones": ones,
        }
        agent, info = agent.policy_gradient_update(rollout)
        return agent, (rollout["rewards"].mean(), info["clip_fraction"])

    agent, _ = optimised(lambda a, k: jax.lax.scan(clone, a, k))(
        agent, jax.random.split(jax.random.key(1), 300)
    )
    before = bimodal_scores(agent)
    agent, (rewards, clipped) = optimised(lambda a, k: jax.lax.scan(iteration, a, k))(
        agent, jax.random.split(jax.random.key(2), 25)
    )
    reward, minority = bimodal_scores(agent)
    assert before[0] < 0.2 and reward > 0.8 and minority > 0.3, (before, reward, minority)
    assert float(rewards[-5:].mean()) > float(rewards[:5].mean()) + 0.5
    assert 0 < float(clipped.mean()) < 1


def test_q_values_are_the_state_value_and_config_errors():
    agent = FPO.create(TINY, OBS, ACT, 0)
    obs = jnp.ones((4, 3))
    q = agent.q_values(obs, jnp.zeros((4, 2)))
    np.testing.assert_array_equal(q, agent.q_values(obs, jnp.ones((4, 2))))
    np.testing.assert_array_equal(q, agent.value.apply_fn(agent.value.params, obs))
    with pytest.raises(ValueError, match="num_envs=0"):
        FPOConfig(num_envs=0)
    with pytest.raises(ValueError, match="clip_epsilon"):
        FPOConfig(clip_epsilon=1.5)


def test_rollouts_keep_each_episode_final_state_across_the_automatic_reset(tmp_path):
    """A random flow falls over within tens of steps on Hopper: after a step that ends an
    episode the environment has reset, and the step's next state is the fallen one (mask 0),
    not the new episode's first; within an episode next states chain."""
    task = get_task("hopper")
    env = task.make_env()
    agent = FPO.create(dataclasses.replace(TINY, num_envs=3), *spaces(env), 0)
    loop = OnPolicyLoop(task, agent, None, tmp_path, 300, 0, 300, 1)
    loop.progress, loop.key, loop.logger = RunProgress(), jax.random.key(0), RunLogger(tmp_path)
    loop._start()
    rollout = loop.collect(60)
    assert rollout["observations"].shape == (60, 3, 11) and rollout["actions"].shape == (60, 3, 3)
    assert loop.progress.env_steps == 180 and loop.progress.episodes == rollout["dones"].sum() > 0
    chained = rollout["next_observations"][:-1] == rollout["observations"][1:]
    done = rollout["dones"][:-1].astype(bool)
    assert chained[~done].all() and not chained[done].all(-1).any()
    np.testing.assert_array_equal(rollout["masks"], 1 - rollout["dones"])  # falls: terminals
    unhealthy = rollout["next_observations"][done.nonzero()][:, 0] < 0.7  # Hopper's height
    angle = np.abs(rollout["next_observations"][done.nonzero()][:, 1]) > 0.2
    assert (unhealthy | angle).all()


def spaces(env):
    return env.observation_space, env.action_space
