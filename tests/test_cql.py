"""CQL: the critic loss (TD and conservative terms) against numpy by hand, a known-answer
bandit against the same agent without the penalty, the Lagrange multiplier's direction, UTD
scanning, the presets and the registry."""

import dataclasses

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from agent_helpers import np_, sgd
from agent_helpers import random_batch as batch

import o2o.agents.cql  # noqa: F401  (registers cql)
from o2o.agents.cql import CQL, CQL_ANTMAZE, CQL_LOCOMOTION, CQLConfig
from o2o.nets.policies import tanh_gaussian_sample

OBS = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
ACT = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
TINY = dict(hidden_dims=(16, 16), batch_size=8, cql_n_actions=3)
# Every option off the default path at once: no importance sampling (the data's Q joins the
# log-sum-exp), max backup over N actions with entropy, temperature 0.5, Lagrange; the clip
# bounds are set from the data in the fixture.
VARIANT = CQLConfig(
    **TINY,
    backup_entropy=True,
    cql_importance_sample=False,
    cql_max_target_backup=True,
    cql_temp=0.5,
    cql_lagrange=True,
    cql_target_action_gap=0.8,
)
update = jax.jit(CQL.update)
critic_loss = jax.jit(lambda agent, b, key: agent.critic_loss(agent.critic.params, b, key))
# The networks and the sampler, jitted for the hand computation (eager ops compile one by one).
critic_apply = jax.jit(lambda agent, params, o, a: agent.critic.apply_fn(params, o, a))
actor_grad = jax.jit(
    lambda agent, b, key: jax.grad(lambda p: agent.actor_loss(p, b, key)[0])(agent.actor.params)
)
policy_sample = jax.jit(
    lambda agent, o, key: tanh_gaussian_sample(*agent.actor.apply_fn(agent.actor.params, o), key)
)


def hand_critic_loss(agent, b, key):
    """The module docstring's L = sum_i L_i in numpy; networks and samplers run in JAX."""
    cfg, n = agent.config, agent.config.cql_n_actions
    obs, next_obs, actions = b["observations"], b["next_observations"], b["actions"]
    (size, dim), rows = actions.shape, np.arange(len(actions))
    key_target, key_rand, key_pi, key_next_pi = jax.random.split(key, 4)

    def sample(o, key, m):
        a, log_prob = policy_sample(agent, np.repeat(o[:, None], m, 1), key)
        return a, np_(log_prob)

    def q(params, o, a):
        o = o if a.ndim == 2 else np.repeat(o[:, None], a.shape[1], 1)
        return np_(critic_apply(agent, params, o, a))

    m = n if cfg.cql_max_target_backup else 1
    next_a, next_log_prob = sample(next_obs, key_target, m)
    next_q = q(agent.target_critic_params, next_obs, next_a).min(0)
    best = next_q.argmax(-1)
    next_v = next_q[rows, best]
    if cfg.backup_entropy:
        next_v = next_v - np_(agent.temperature) * next_log_prob[rows, best]
    y = np_(b["rewards"]) + 0.99 * np_(b["masks"]) * next_v

    params = agent.critic.params
    uniform = jax.random.uniform(key_rand, (size, n, dim), minval=-1.0, maxval=1.0)
    pi_a, pi_log_prob = sample(obs, key_pi, n)
    next_pi_a, next_pi_log_prob = sample(next_obs, key_next_pi, n)
    q_data = q(params, obs, actions)
    # All proposals are scored at s, including those drawn from pi(.|s').
    q_rand, q_pi, q_next_pi = (q(params, obs, a) for a in (uniform, pi_a, next_pi_a))
    if cfg.cql_importance_sample:
        terms = [q_rand + dim * np.log(2.0), q_pi - pi_log_prob, q_next_pi - next_pi_log_prob]
    else:
        terms = [q_rand, q_pi, q_next_pi, q_data[..., None]]
    x = np.concatenate(terms, -1) / cfg.cql_temp
    peak = x.max(-1)
    ood = cfg.cql_temp * (peak + np.log(np.exp(x - peak[..., None]).sum(-1)))
    raw_diff = ood - q_data
    gap = np.clip(raw_diff, cfg.cql_clip_diff_min, cfg.cql_clip_diff_max).mean(-1)
    td = ((q_data - y[None]) ** 2).mean(-1)
    weight, penalty = cfg.cql_alpha, gap
    if cfg.cql_lagrange:
        weight, penalty = cfg.cql_alpha * np.e, gap - cfg.cql_target_action_gap  # log a' = 1
    return {
        "critic_loss": np.sum(td + weight * penalty),
        "td_loss": td.mean(),
        "cql_gap": gap.mean(),
        "cql_ood_q": ood.mean(),
        "cql_data_q": q_data.mean(),
        "target_mean": y.mean(),
        "raw_diff": raw_diff,
    }


def _moved_targets(agent):
    """Target critics unlike the online ones, so using the wrong set shows."""
    return agent.replace(
        target_critic_params=jax.tree.map(lambda p: p * 1.5, agent.target_critic_params)
    )


@pytest.fixture(scope="module")
def variant_agent_and_batch():
    """The variant agent with clip bounds at the 25th and 75th percentile of the raw
    differences C_i(s) - Q_i(s, a), so both bounds act on some rows; the actor and alpha'
    step by plain SGD, so their updates can be checked exactly."""
    agent = _moved_targets(CQL.create(VARIANT, OBS, ACT, 0))
    b = batch(1)
    key = jax.random.split(agent.rng)[1]  # the key `update` passes to critic_loss
    low, high = np.percentile(hand_critic_loss(agent, b, key)["raw_diff"], [25, 75])
    config = dataclasses.replace(VARIANT, cql_clip_diff_min=low, cql_clip_diff_max=high)
    agent = agent.replace(
        actor=sgd(agent.actor), log_alpha_prime=sgd(agent.log_alpha_prime), config=config
    )
    return agent, b


def test_presets_are_the_reference_recipes():
    reference = dict(
        hidden_dims=(256, 256),
        num_critics=2,
        num_min_critics=2,
        critic_layer_norm=False,
        backup_entropy=False,
        actor_q="min",
        init_temperature=1.0,
        actor_lr=1e-4,
        critic_lr=3e-4,
        temperature_lr=1e-4,
        discount=0.99,
        tau=5e-3,
        batch_size=256,
        utd_ratio=1,
        start_steps=0,
        cql_alpha=5.0,
        cql_n_actions=10,
        cql_importance_sample=True,
        cql_temp=1.0,
        cql_lagrange=False,
        cql_max_target_backup=False,
        cql_clip_diff_min=-np.inf,
        cql_clip_diff_max=np.inf,
    )
    assert {k: getattr(CQL_LOCOMOTION, k) for k in reference} == reference
    antmaze = (CQL_ANTMAZE.cql_lagrange, CQL_ANTMAZE.cql_target_action_gap)
    assert antmaze == (True, 0.8) and CQL_ANTMAZE.cql_max_target_backup
    assert CQL_ANTMAZE.cql_alpha == 5.0 and CQL_ANTMAZE.hidden_dims == (256,) * 4
    agent = CQL.create(CQLConfig(**TINY), OBS, ACT, 0)
    assert agent.target_entropy == -2.0 and agent.log_alpha_prime is None  # -|A|
    with pytest.raises(ValueError, match="cql_n_actions"):
        CQLConfig(cql_n_actions=0)
    with pytest.raises(ValueError, match="num_min_critics"):
        CQLConfig(num_critics=3)


def test_critic_loss_by_hand_default_recipe():
    agent = _moved_targets(CQL.create(CQLConfig(**TINY), OBS, ACT, 0))
    b, key = batch(1), jax.random.key(7)
    _, info = critic_loss(agent, b, key)
    expected = hand_critic_loss(agent, b, key)
    for name in ("critic_loss", "td_loss", "cql_gap", "cql_ood_q", "cql_data_q", "target_mean"):
        np.testing.assert_allclose(info[name], expected[name], rtol=1e-5, err_msg=name)
    # The penalty dominates at alpha 5 and is positive: the soft max over proposals exceeds Q.
    assert float(info["cql_gap"]) > 0 and float(info["cql_penalty"]) > float(info["td_loss"])


def test_critic_loss_by_hand_variant_and_lagrange_step(variant_agent_and_batch):
    """No importance sampling, max backup with entropy, T = 0.5, both clip bounds active,
    Lagrange weight e * cql_alpha. The step is joint: alpha' moves by -d/d log alpha' of
    -alpha' cql_alpha (gap - g), and the actor's gradient is taken at the pre-step critic."""
    agent, b = variant_agent_and_batch
    key = jax.random.split(agent.rng)[1]
    expected = hand_critic_loss(agent, b, key)
    diffs = expected["raw_diff"]
    low, high = agent.config.cql_clip_diff_min, agent.config.cql_clip_diff_max
    assert (diffs < low).any() and (diffs > high).any()

    new, info = update(agent, jax.tree.map(lambda x: x[None], b))
    for name in ("critic_loss", "td_loss", "cql_gap", "cql_ood_q", "cql_data_q", "target_mean"):
        np.testing.assert_allclose(info[name], expected[name], rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(info["cql_weight"], 5.0 * np.e, rtol=1e-6)

    excess = expected["cql_gap"] - 0.8
    assert excess > 0  # the gap is above its target g here: alpha' must grow
    step = float(new.log_alpha_prime.params["log_alpha_prime"]) - 1.0
    np.testing.assert_allclose(step, np.e * 5.0 * excess, rtol=1e-4)
    assert step * excess > 0

    key_actor = jax.random.split(jax.random.split(agent.rng)[0])[1]  # update_actor's key
    grads = actor_grad(agent, b, key_actor)
    params = (agent.actor.params, grads, new.actor.params)
    for p, g, q in zip(*map(jax.tree.leaves, params), strict=True):
        np.testing.assert_allclose(q, np_(p) - np_(g), rtol=1e-4, atol=1e-6)


def test_alpha_prime_rises_above_the_target_gap_and_falls_below():
    agent = CQL.create(dataclasses.replace(VARIANT, cql_target_action_gap=1.0), OBS, ACT, 0)
    params = agent.log_alpha_prime.params
    for gap, sign in ((3.0, 1.0), (-2.0, -1.0)):
        grad = jax.grad(lambda p, gap=gap: agent.alpha_prime_loss(p, gap)[0])(params)
        # Gradient descent on log alpha' moves it against the gradient.
        assert np.sign(-float(grad["log_alpha_prime"])) == sign


# One config and batch shape for the bandit and the UTD test, so they share one compilation.
BANDIT = CQLConfig(
    hidden_dims=(16, 16),
    batch_size=16,
    utd_ratio=2,
    cql_n_actions=4,
    actor_lr=1e-3,
    critic_lr=1e-3,
    temperature_lr=1e-3,
)


@pytest.fixture(scope="module")
def fresh_agent():
    """Shared (agents are immutable): a new agent has new static optimiser closures, so
    creating one per test would compile `update` again."""
    return CQL.create(BANDIT, OBS, ACT, 0)


def test_bandit_pushes_unseen_actions_below_data_and_below_sac(fresh_agent):
    """One state, terminal, reward 1, data actions within 0.05 of (0.5, 0.5). Without the
    penalty (cql_alpha = 0: SAC's losses, the same initial networks and compiled update) Q
    at a = (-0.9, -0.9) is whatever the network extrapolates (0.25 to 1 over seeds 0-4); CQL
    must push it far below Q on the data, and keep its policy on the data's actions."""
    rng = np.random.default_rng(0)
    ones = np.ones((2, 16))
    b = {
        "observations": np.ones((2, 16, 3)),
        "actions": 0.5 + rng.uniform(-0.05, 0.05, (2, 16, 2)),
        "rewards": ones,
        "next_observations": np.ones((2, 16, 3)),
        "masks": 0 * ones,
    }
    b = {k: v.astype(np.float32) for k, v in b.items()}
    probe = (jnp.ones((2, 3)), jnp.array([[0.5, 0.5], [-0.9, -0.9]]))
    q = {}
    for alpha in (5.0, 0.0):
        agent = fresh_agent.replace(cql_alpha=jnp.float32(alpha))
        for _ in range(100):  # 200 updates
            agent, _ = update(agent, b)
        q[alpha] = np_(agent.q_values(*probe))
        if alpha:
            greedy = agent.sample_actions(jnp.ones((1, 3)), jax.random.key(0), True)
            assert float(jnp.abs(greedy - 0.5).max()) < 0.25  # without the penalty: near 0.1
    assert abs(q[0.0][0] - 1.0) < 0.1 and abs(q[5.0][0] - 1.0) < 0.5  # data: Q near r = 1
    # Seeds 0-4 give margins of 3.6 to 6.5 and 2.7 to 6.4; seed 0 gives 5.4 and 4.5.
    assert q[5.0][1] < q[5.0][0] - 2.0
    assert q[5.0][1] < q[0.0][1] - 2.0


def test_update_with_utd_2_runs_two_joint_steps(fresh_agent):
    agent = fresh_agent
    new, metrics = update(agent, batch(0, n=16, utd=2))
    steps = [int(s.step) for s in (new.critic, new.actor, new.log_temperature)]
    assert steps == [2, 2, 2]
    keys = {"critic_loss", "td_loss", "cql_gap", "cql_ood_q", "cql_data_q", "actor_loss"}
    assert keys <= set(metrics)
    assert all(np.shape(v) == () and np.isfinite(float(v)) for v in metrics.values())
    far = jnp.asarray(batch(2, n=64)["observations"]) * 1e3  # drives pre-tanh means far out
    for deterministic in (False, True):
        actions = new.sample_actions(far, jax.random.key(1), deterministic)
        assert actions.shape == (64, 2) and float(jnp.abs(actions).max()) <= 1.0
    q = new.q_values(far[:4], actions[:4])
    all_q = new.critic.apply_fn(new.critic.params, far[:4], actions[:4])
    np.testing.assert_array_equal(q, all_q.min(0))
    assert new.on_switch() is new
