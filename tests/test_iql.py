"""IQL: each loss against numpy by hand, the update order, a known-answer expectile bandit,
UTD scanning, the registry."""

import dataclasses
import functools

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from agent_helpers import np_, random_batch, sgd

from o2o.agents.iql import IQL, IQL_ANTMAZE, IQL_LOCOMOTION, IQLConfig, actor_learning_rate

batch = functools.partial(random_batch, boundary_actions=True)
OBS = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
ACT = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
TINY = dict(hidden_dims=(16, 16), batch_size=8)


@pytest.fixture
def agent_and_batch():
    agent = IQL.create(IQLConfig(**TINY, temperature=30.0), OBS, ACT, 0)
    b = batch(1)
    # Target critics differ from the online ones, so using the wrong set shows; V is shifted
    # to the median of min_i Q'_i so that advantages take both signs.
    agent = agent.replace(
        target_critic_params=jax.tree.map(lambda p: p * 1.5, agent.target_critic_params)
    )
    u = agent._target_q(b["observations"], b["actions"]) - agent.value.apply_fn(
        agent.value.params, b["observations"]
    )
    params = jax.tree.map(lambda p: p, agent.value.params)  # a copy to edit
    params["params"]["Dense_0"]["bias"] += np.median(np_(u))
    return agent.replace(value=agent.value.replace(params=params)), b


def test_presets_are_the_reference_recipes():
    reference = dict(
        hidden_dims=(256, 256),
        num_critics=2,
        actor_lr=3e-4,
        critic_lr=3e-4,
        value_lr=3e-4,
        decay_steps=10**6,
        discount=0.99,
        tau=0.005,
        expectile=0.7,
        temperature=3.0,
        max_weight=100.0,
        batch_size=256,
        utd_ratio=1,
        offline_ratio=0.5,  # stand-in for the reference's one shared buffer (module notes)
        start_steps=0,
    )
    assert {k: getattr(IQL_LOCOMOTION, k) for k in reference} == reference
    assert (IQL_ANTMAZE.expectile, IQL_ANTMAZE.temperature) == (0.9, 10.0)


def test_manipulation_presets_are_the_fql_papers():
    """Table 6 of the FQL paper: AWR temperature per OGBench suite; 4 x 256, expectile 0.9."""
    from o2o.train.pipeline import task_preset

    temperatures = {
        "cube-single-play": 1.0,
        "cube-double-play-singletask-task3": 0.3,
        "scene-play": 10.0,
        "puzzle-3x3-noisy-singletask": 10.0,
        "puzzle-4x4-play": 3.0,
    }
    for task, temperature in temperatures.items():
        config = task_preset("iql", task)[1]
        assert config.temperature == temperature, task
        assert (config.expectile, config.hidden_dims) == (0.9, (256,) * 4)
        assert not config.reward_scale_by_return_range and config.decay_steps is None


def test_fql_repository_networks_unit_std_untanhed_mean_clipped_to_act():
    """The manipulation preset's actor: N(f(s), I) with no tanh, so the deterministic action
    is the mean clipped to the bounds; Q and V have LayerNorm."""
    config = IQLConfig(
        **TINY, activation="gelu", critic_layer_norm=True, tanh_mean=False, const_std=True
    )
    agent = IQL.create(config, OBS, ACT, 0)
    params = agent.actor.params["params"]
    assert "log_std" not in params
    big = {**params, "Dense_0": {**params["Dense_0"], "bias": jnp.full(2, 3.0)}}
    mean, log_std = agent.actor.apply_fn({"params": big}, jnp.zeros((1, 3)))
    np.testing.assert_allclose(mean, 3.0, atol=1e-5)  # not squashed
    np.testing.assert_array_equal(log_std, 0.0)
    actor = agent.actor.replace(params={"params": big})
    act = agent.replace(actor=actor).sample_actions(jnp.zeros((1, 3)), jax.random.key(0), True)
    np.testing.assert_array_equal(act, 1.0)
    assert any("LayerNorm" in k for k in agent.value.params["params"]["MLP_0"])
    agent, info = agent.update(batch(1))
    assert np.isfinite(float(info["actor_loss"]))


def test_actor_lr_decays_then_stays_constant_for_fine_tuning():
    lr = actor_learning_rate(IQLConfig(decay_steps=100))
    np.testing.assert_allclose([lr(0), lr(50), lr(99)], [3e-4, 1.5e-4, 0.0], atol=1e-7)
    np.testing.assert_allclose([lr(100), lr(10**6)], [3e-4, 3e-4])
    assert actor_learning_rate(IQLConfig(decay_steps=None)) == 3e-4
    with pytest.raises(ValueError, match="decay_steps"):
        IQLConfig(decay_steps=0)


def test_value_loss_by_hand(agent_and_batch):
    agent, b = agent_and_batch
    loss, _ = agent.value_loss(agent.value.params, b)
    qs = np_(agent.critic.apply_fn(agent.target_critic_params, b["observations"], b["actions"]))
    u = qs.min(0) - np_(agent.value.apply_fn(agent.value.params, b["observations"]))
    assert (u < 0).any() and (u > 0).any()
    expected = np.mean(np.where(u < 0, 0.3, 0.7) * u**2)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_critic_loss_by_hand(agent_and_batch):
    agent, b = agent_and_batch
    loss, info = agent.critic_loss(agent.critic.params, b)
    next_v = np_(agent.value.apply_fn(agent.value.params, b["next_observations"]))
    target = np_(b["rewards"]) + 0.99 * np_(b["masks"]) * next_v
    q = np_(agent.critic.apply_fn(agent.critic.params, b["observations"], b["actions"]))
    expected = np.mean((q[0] - target) ** 2) + np.mean((q[1] - target) ** 2)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_allclose(info["target_mean"], target.mean(), rtol=1e-5)


def test_actor_loss_by_hand(agent_and_batch):
    agent, b = agent_and_batch
    obs, actions = b["observations"], np_(b["actions"])
    # A non-trivial policy: shifted log-std, so std enters the likelihood.
    params = jax.tree.map(lambda p: p, agent.actor.params)  # a copy to edit
    params["params"]["log_std"] = jnp.array([-0.5, 0.3])
    loss, _ = agent.actor_loss(params, b)

    qs = np_(agent.critic.apply_fn(agent.target_critic_params, obs, b["actions"]))
    adv = qs.min(0) - np_(agent.value.apply_fn(agent.value.params, obs))
    raw = np.exp(30.0 * adv)
    assert (raw > 100).any() and (raw < 100).any()  # the clip is exercised
    weights = np.minimum(raw, 100.0)
    mean, _ = agent.actor.apply_fn(params, obs)
    std = np.exp([-0.5, 0.3])
    log_prob = np.sum(
        -0.5 * ((actions - np_(mean)) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi), -1
    )
    np.testing.assert_allclose(loss, -np.mean(weights * log_prob), rtol=1e-5)
    assert np.isfinite(float(loss))


def test_update_order_is_the_reference(agent_and_batch):
    """Per minibatch: V first; the actor and the critic both use the new V (and the old
    target critics); the target critics then move towards the new critics."""
    agent, b = agent_and_batch
    agent = agent.replace(actor=sgd(agent.actor), critic=sgd(agent.critic), value=sgd(agent.value))
    new, _ = agent.update_step(b)
    new_v = agent.replace(value=new.value)
    steps = [
        (agent.value, new.value, agent.value_loss),
        (agent.actor, new.actor, new_v.actor_loss),
        (agent.critic, new.critic, new_v.critic_loss),
    ]
    for old, updated, loss in steps:
        grads = jax.grad(lambda p, loss=loss: loss(p, b)[0])(old.params)
        for p, g, q in zip(*map(jax.tree.leaves, (old.params, grads, updated.params)), strict=True):
            np.testing.assert_allclose(q, np_(p) - np_(g), rtol=1e-4, atol=1e-6)
    target = jax.tree.map(
        lambda c, t: 0.005 * np_(c) + 0.995 * np_(t),
        new.critic.params,
        agent.target_critic_params,
    )
    for t, expected in zip(*map(jax.tree.leaves, (new.target_critic_params, target)), strict=True):
        np.testing.assert_allclose(t, expected, rtol=1e-5, atol=1e-7)


# One config and batch shape for the bandit and the UTD test, so they share one compilation.
BANDIT = dataclasses.replace(
    IQL_ANTMAZE,
    hidden_dims=(16, 16),
    actor_lr=1e-2,
    critic_lr=1e-2,
    value_lr=1e-2,
    tau=0.1,
    decay_steps=None,
    batch_size=20,
    utd_ratio=2,
)
update = jax.jit(IQL.update)


@pytest.fixture(scope="module")
def fresh_agent():
    """Shared (agents are immutable): a new agent has new static optimiser closures, so
    creating one per test would compile `update` again."""
    return IQL.create(BANDIT, OBS, ACT, 0)


def test_expectile_bandit_known_answer(fresh_agent):
    """One state, terminal: a=(+0.5, +0.5) pays 1 (30% of data), a=-(0.5, 0.5) pays 0 (70%).

    With expectile tau = 0.9, V must reach the tau-expectile of {0: 0.7, 1: 0.3},
    m = tau p / (tau p + (1-tau)(1-p)) = 0.794 (the mean would be 0.3, the max 1); AWR at
    beta 10 must prefer the rare rewarding action, where behaviour cloning gives the mean -0.2.
    """
    agent = fresh_agent
    good = np.arange(20) < 6
    b = {
        "observations": jnp.ones((20, 3)),
        "actions": jnp.asarray(np.where(good, 0.5, -0.5)[:, None].repeat(2, 1), jnp.float32),
        "rewards": jnp.asarray(good, jnp.float32),
        "next_observations": jnp.ones((20, 3)),
        "masks": jnp.zeros(20),
    }
    b = jax.tree.map(lambda x: jnp.stack([x, x]), b)
    for _ in range(200):  # 400 updates
        agent, _ = update(agent, b)

    answer = 0.9 * 0.3 / (0.9 * 0.3 + 0.1 * 0.7)
    v = float(agent.value.apply_fn(agent.value.params, jnp.ones((1, 3)))[0])
    assert v == pytest.approx(answer, abs=0.03)
    q = agent.q_values(jnp.ones((2, 3)), jnp.array([[0.5, 0.5], [-0.5, -0.5]]))
    np.testing.assert_allclose(q, [1.0, 0.0], atol=0.03)
    # Weights exp(10 (1 - V)) against exp(-10 V): the policy mean sits near +0.5.
    action = agent.sample_actions(jnp.ones((1, 3)), jax.random.key(0), True)
    assert float(action.min()) > 0.4


def test_update_with_utd_2_runs_two_full_steps(fresh_agent):
    agent = fresh_agent
    b = batch(0, n=20, utd=2)
    new, metrics = update(agent, b)
    assert [int(s.step) for s in (new.actor, new.critic, new.value)] == [2, 2, 2]
    keys = {"value_loss", "critic_loss", "actor_loss", "adv_mean", "weight_mean", "q_mean"}
    assert keys <= set(metrics)
    assert all(np.shape(v) == () and np.isfinite(float(v)) for v in metrics.values())
    moved = jax.tree.map(
        lambda t, t0: np.abs(np_(t) - np_(t0)).max(),
        new.target_critic_params,
        agent.target_critic_params,
    )
    assert max(jax.tree.leaves(moved)) > 0  # soft target update ran
    far = jnp.asarray(batch(2, n=64)["observations"]) * 1e3  # drives pre-tanh means far out
    for deterministic in (False, True):
        actions = new.sample_actions(far, jax.random.key(1), deterministic)
        assert actions.shape == (64, 2) and float(jnp.abs(actions).max()) <= 1.0
    assert new.on_switch() is new
