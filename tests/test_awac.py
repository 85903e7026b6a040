"""AWAC: each loss against numpy by hand, the update order, a known-answer bandit, UTD
scanning, the registry."""

import dataclasses
import functools

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from agent_helpers import np_, random_batch, sgd

from o2o.agents.awac import AWAC, AWAC_ANTMAZE, AWAC_LOCOMOTION, AWACConfig

batch = functools.partial(random_batch, boundary_actions=True)
OBS = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
ACT = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
TINY = dict(hidden_dims=(16, 16), batch_size=8)


@pytest.fixture
def agent_and_batch():
    # A small temperature, so the weights' clip at 100 is exercised; target critics differ
    # from the online ones, so using the wrong set shows.
    agent = AWAC.create(AWACConfig(**TINY, awac_lambda=0.01), OBS, ACT, 0)
    agent = agent.replace(
        target_critic_params=jax.tree.map(lambda p: p * 1.5, agent.target_critic_params)
    )
    return agent, batch(1)


def test_presets_are_the_reference_recipes():
    reference = dict(
        hidden_dims=(256, 256, 256),
        num_critics=2,
        actor_lr=3e-4,
        critic_lr=3e-4,
        discount=0.99,
        tau=5e-3,
        max_weight=100.0,
        log_std_min=-20.0,
        log_std_max=2.0,
        batch_size=256,
        utd_ratio=1,
    )
    assert {k: getattr(AWAC_LOCOMOTION, k) for k in reference} == reference
    assert AWAC_LOCOMOTION.awac_lambda == pytest.approx(1 / 3)
    assert AWAC_ANTMAZE.awac_lambda == 0.1
    with pytest.raises(ValueError, match="awac_lambda"):
        AWACConfig(awac_lambda=0.0)
    # d3rlpy's starting std, for the comparison: log-std -3 before any update.
    agent = AWAC.create(AWACConfig(**TINY, log_std_init=-3.0), OBS, ACT, 0)
    _, log_std = agent.actor.apply_fn(agent.actor.params, jnp.zeros((1, 3)))
    np.testing.assert_allclose(log_std, -3.0)


def test_pytorch_initialisation():
    """`weight_init="torch"`: every layer's kernel and bias uniform in +-1/sqrt(fan_in) (PyTorch's
    nn.Linear, the PyTorch references' networks); the default keeps jaxrl's zero biases."""
    wide = dict(TINY, hidden_dims=(256, 256))
    for weight_init in ("torch", "xavier"):
        agent = AWAC.create(AWACConfig(**wide, weight_init=weight_init), OBS, ACT, 0)
        params = {"actor": agent.actor.params, "critic": agent.critic.params}
        layers = [
            (path, leaf)
            for path, leaf in jax.tree_util.tree_leaves_with_path(params)
            if path[-1].key in ("kernel", "bias")
        ]
        assert len(layers) == 12  # kernel and bias of 3 layers: the actor, the critics (stacked)
        for path, leaf in layers:
            if path[-1].key == "bias":
                assert np.all(leaf == 0) == (weight_init == "xavier"), path
                continue
            bound = leaf.shape[-2] ** -0.5  # fan in
            if weight_init == "torch":
                assert np.abs(leaf).max() <= bound and np.abs(leaf).max() > 0.9 * bound, path
                if leaf.size > 1000:
                    np.testing.assert_allclose(leaf.std(), bound / np.sqrt(3), rtol=0.1)


def test_critic_loss_by_hand(agent_and_batch):
    agent, b = agent_and_batch
    next_actions = jnp.asarray(np.random.default_rng(3).uniform(-1, 1, (8, 2)), jnp.float32)
    loss, info = agent.critic_loss(agent.critic.params, b, next_actions)
    next_q = np_(
        agent.critic.apply_fn(agent.target_critic_params, b["next_observations"], next_actions)
    )
    target = np_(b["rewards"]) + 0.99 * np_(b["masks"]) * next_q.min(0)  # no entropy term
    q = np_(agent.critic.apply_fn(agent.critic.params, b["observations"], b["actions"]))
    expected = np.mean((q[0] - target) ** 2) + np.mean((q[1] - target) ** 2)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_allclose(info["target_mean"], target.mean(), rtol=1e-5)


def test_critic_entropy_weight_is_sacs_target_term(agent_and_batch):
    """With `critic_entropy_weight` t (d3rlpy's AWAC: 1) the target is
    r + gamma m (min Q'(s', a') - t log pi(a'|s')): a' the clipped Gaussian draw and log pi its
    Gaussian density, or with `squashed_target_actions` (d3rlpy's SAC target) a' = tanh(u),
    u ~ N(raw mean, std), and its tanh-Gaussian density."""
    agent, b = agent_and_batch
    next_obs, key = b["next_observations"], jax.random.key(5)
    soft = agent.replace(config=dataclasses.replace(agent.config, critic_entropy_weight=0.5))
    assert agent.target_actions(next_obs, key)[1] is None  # no term, no density
    mean, log_std = (np_(x) for x in agent.actor.apply_fn(agent.actor.params, next_obs))
    raw, _ = (np_(x) for x in agent.actor.apply_fn(agent.actor.params, next_obs, True))
    np.testing.assert_allclose(np.tanh(raw), mean, rtol=1e-5, atol=1e-6)
    for squashed in (False, True):
        config = dataclasses.replace(soft.config, squashed_target_actions=squashed)
        next_actions, log_pi = soft.replace(config=config).target_actions(next_obs, key)
        a = np_(next_actions)
        if squashed:  # log N(u; raw, std) - sum log(1 - a^2), u = atanh(a)
            u = np.arctanh(a.astype(np.float64))
            z = (u - raw) / np.exp(log_std)
            by_hand = np.sum(-0.5 * z**2 - log_std - 0.5 * np.log(2 * np.pi), -1)
            by_hand -= np.sum(np.log(1 - a.astype(np.float64) ** 2), -1)
        else:
            np.testing.assert_array_equal(a, np_(agent.sample_actions(next_obs, key)))
            z = (a - mean) / np.exp(log_std)
            by_hand = np.sum(-0.5 * z**2 - log_std - 0.5 * np.log(2 * np.pi), -1)
        np.testing.assert_allclose(log_pi, by_hand, rtol=1e-4, atol=1e-4)
        plain = np_(agent.td_target(b, next_actions))
        expected = plain - 0.99 * np_(b["masks"]) * 0.5 * by_hand
        np.testing.assert_allclose(
            soft.td_target(b, next_actions, log_pi), expected, rtol=1e-4, atol=1e-4
        )
        assert np.abs(expected - plain).max() > 0.1  # the term is there
    with pytest.raises(ValueError, match="critic_entropy_weight"):
        AWACConfig(critic_entropy_weight=-1.0)


def test_actor_loss_by_hand(agent_and_batch):
    agent, b = agent_and_batch
    obs, actions = b["observations"], np_(b["actions"])
    pi_actions = jnp.asarray(np.random.default_rng(4).uniform(-1, 1, (8, 2)), jnp.float32)
    params = jax.tree.map(lambda p: p, agent.actor.params)  # a copy to edit
    params["params"]["log_std"] = jnp.array([-0.5, 0.3])  # std enters the likelihood
    loss, info = agent.actor_loss(params, b, pi_actions)

    qs = np_(agent.critic.apply_fn(agent.critic.params, obs, b["actions"]))  # online critics
    vs = np_(agent.critic.apply_fn(agent.critic.params, obs, pi_actions))
    adv = qs.min(0) - vs.min(0)
    raw = np.exp(adv / 0.01)
    assert (raw > 100).any() and (raw < 100).any()  # the clip is exercised
    weights = np.minimum(raw, 100.0)
    mean, _ = agent.actor.apply_fn(params, obs)
    std = np.exp([-0.5, 0.3])
    log_prob = np.sum(
        -0.5 * ((actions - np_(mean)) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi), -1
    )
    np.testing.assert_allclose(loss, -np.mean(weights * log_prob), rtol=1e-5)
    np.testing.assert_allclose(info["weight_clip_frac"], np.mean(raw >= 100), rtol=1e-6)
    # rlkit's and d3rlpy's normalisation: N softmax(A / lambda) over the batch, unclipped.
    soft = dataclasses.replace(agent.config, softmax_weights=True)
    loss_soft, _ = agent.replace(config=soft).actor_loss(params, b, pi_actions)
    scaled = adv / 0.01
    softmax = np.exp(scaled - scaled.max()) / np.exp(scaled - scaled.max()).sum()
    np.testing.assert_allclose(loss_soft, -np.mean(8 * softmax * log_prob), rtol=1e-4)
    # Huge advantages saturate at the clip instead of overflowing.
    far = dataclasses.replace(agent.config, awac_lambda=1e-30)
    loss_far, _ = agent.replace(config=far).actor_loss(params, b, pi_actions)
    assert np.isfinite(float(loss_far))


def test_update_order_is_corl(agent_and_batch):
    """Per minibatch: the critics step first; the actor then weighs by the new critics; a' and
    a_pi come from the pre-step policy; the target critics then move towards the new ones."""
    agent, b = agent_and_batch
    agent = agent.replace(actor=sgd(agent.actor), critic=sgd(agent.critic))
    new, _ = agent.update_step(b)

    _, key_next, key_pi = jax.random.split(agent.rng, 3)
    next_actions = agent.sample_actions(b["next_observations"], key_next)
    pi_actions = agent.sample_actions(b["observations"], key_pi)
    new_critic = agent.replace(critic=new.critic)
    steps = [
        (agent.critic, new.critic, lambda p: agent.critic_loss(p, b, next_actions)[0]),
        (agent.actor, new.actor, lambda p: new_critic.actor_loss(p, b, pi_actions)[0]),
    ]
    for old, updated, loss in steps:
        grads = jax.grad(loss)(old.params)
        assert max(float(np.abs(np_(g)).max()) for g in jax.tree.leaves(grads)) > 0
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
    AWAC_ANTMAZE,
    hidden_dims=(16, 16),
    actor_lr=1e-2,
    critic_lr=1e-2,
    tau=0.1,
    batch_size=20,
    utd_ratio=2,
)
update = jax.jit(AWAC.update)


@pytest.fixture(scope="module")
def fresh_agent():
    """Shared (agents are immutable): a new agent has new static optimiser closures, so
    creating one per test would compile `update` again."""
    return AWAC.create(BANDIT, OBS, ACT, 0)


def test_bandit_known_answer(fresh_agent):
    """One state, terminal: a=(+0.5, +0.5) pays 1 (30% of data), a=-(0.5, 0.5) pays 0 (70%).

    Q must learn the two rewards; the advantage-weighted likelihood at lambda 0.1 must prefer
    the rare rewarding action, where behaviour cloning gives the mean -0.2.
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

    q = agent.q_values(jnp.ones((2, 3)), jnp.array([[0.5, 0.5], [-0.5, -0.5]]))
    np.testing.assert_allclose(q, [1.0, 0.0], atol=0.05)
    action = agent.sample_actions(jnp.ones((1, 3)), jax.random.key(0), True)
    assert float(action.min()) > 0.4


def test_update_with_utd_2_runs_two_full_steps(fresh_agent):
    agent = fresh_agent
    new, metrics = update(agent, batch(0, n=20, utd=2))
    assert [int(s.step) for s in (new.actor, new.critic)] == [2, 2]
    keys = {"critic_loss", "actor_loss", "adv_mean", "weight_mean", "q_mean", "policy_std"}
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
