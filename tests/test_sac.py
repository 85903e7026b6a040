"""SAC / RLPD: the ensemble target by hand, a known-answer bandit, determinism, round-trip."""

import dataclasses

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from o2o.agents.sac import EDAC, NAIVE, RLPD, SAC, SAC_DEFAULT, SAC_N, SACConfig

OBS = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
ACT = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
TINY = dict(hidden_dims=(16, 16), batch_size=32)


def batch(key, n=32, utd=None):
    k = jax.random.split(key, 4)
    shape = (n,) if utd is None else (utd, n)
    return {
        "observations": jax.random.normal(k[0], (*shape, 3)),
        "actions": jax.random.uniform(k[1], (*shape, 2), minval=-1, maxval=1),
        "rewards": jax.random.normal(k[2], shape),
        "next_observations": jax.random.normal(k[3], (*shape, 3)),
        "masks": jnp.ones(shape).at[..., 0].set(0.0),
    }


def test_presets_are_the_reference_recipes():
    assert (RLPD.num_critics, RLPD.num_min_critics, RLPD.utd_ratio) == (10, 2, 20)
    assert RLPD.critic_layer_norm and RLPD.backup_entropy
    assert (RLPD.offline_ratio, RLPD.start_steps, RLPD.init_temperature) == (0.5, 5000, 1.0)
    assert (SAC_DEFAULT.num_critics, SAC_DEFAULT.utd_ratio, SAC_DEFAULT.offline_ratio) == (2, 1, 0)
    assert not SAC_DEFAULT.critic_layer_norm and SAC_DEFAULT.actor_q == "min"
    assert (SAC_DEFAULT.critic_lr, SAC_DEFAULT.actor_lr) == (1e-3, 3e-4)  # CleanRL's rates
    assert SAC.create(dataclasses.replace(SAC_DEFAULT, **TINY), OBS, ACT, 0).target_entropy == -2.0
    assert not NAIVE.critic_layer_norm and (NAIVE.offline_ratio, NAIVE.start_steps) == (1.0, 0)
    assert (SAC_N.num_critics, SAC_N.num_min_critics, SAC_N.actor_q) == (10, 10, "min")
    assert SAC_N.hidden_dims == (256, 256, 256) and SAC_N.diversity_weight == 0.0
    assert SAC_N.log_std_min == -5.0  # EDAC's clip, as CORL's (SAC: -20)
    assert dataclasses.replace(EDAC, diversity_weight=0.0) == SAC_N and EDAC.diversity_weight == 1
    assert SAC.create(dataclasses.replace(SAC_N, **TINY), OBS, ACT, 0).target_entropy == -2.0
    agent = SAC.create(RLPD, OBS, ACT, 0)
    assert agent.target_entropy == -1.0  # -|A| / 2


@pytest.mark.parametrize(("backup_entropy", "w"), [(False, 1.0), (True, 1.0), (False, 0.75)])
def test_target_is_min_over_random_subset_by_hand(backup_entropy, w):
    cfg = SACConfig(
        **TINY,
        num_critics=5,
        num_min_critics=2,
        backup_entropy=backup_entropy,
        target_min_weight=w,
    )
    agent = SAC.create(cfg, OBS, ACT, 0)
    # Make target critics differ from the online ones so a wrong parameter set shows.
    agent = agent.replace(
        target_critic_params=jax.tree.map(lambda p: p * 1.5, agent.target_critic_params)
    )
    b = batch(jax.random.key(1))
    key = jax.random.key(7)
    loss, info = agent.critic_loss(agent.critic.params, b, key)

    key_pi, key_subset = jax.random.split(key)
    next_a, next_logp = agent._policy(agent.actor.params, b["next_observations"], key_pi)
    all_next_q = agent.critic.apply_fn(agent.target_critic_params, b["next_observations"], next_a)
    chosen = jax.random.choice(key_subset, 5, (2,), replace=False)
    next_v = w * all_next_q[chosen].min(0) + (1 - w) * all_next_q[chosen].max(0)
    if backup_entropy:
        next_v = next_v - agent.temperature * next_logp
    target = b["rewards"] + 0.99 * b["masks"] * next_v
    q = agent.critic.apply_fn(agent.critic.params, b["observations"], b["actions"])
    np.testing.assert_allclose(loss, jnp.mean((q - target) ** 2), rtol=1e-5)
    np.testing.assert_allclose(info["target_mean"], target.mean(), rtol=1e-5)
    # The subset min is not the min over the whole ensemble (which would be more pessimistic).
    assert float(all_next_q.min(0).mean()) < float(all_next_q[chosen].min(0).mean())


def test_subset_varies_between_updates():
    cfg = SACConfig(**TINY, num_critics=6, num_min_critics=1, backup_entropy=False)
    agent = SAC.create(cfg, OBS, ACT, 0)
    b = batch(jax.random.key(1))
    targets = {
        round(
            float(agent.critic_loss(agent.critic.params, b, jax.random.key(s))[1]["target_mean"]), 4
        )
        for s in range(30)
    }
    assert len(targets) > 3  # different members are drawn


def test_update_runs_utd_critic_steps_and_one_actor_step():
    cfg = dataclasses.replace(RLPD, **TINY, utd_ratio=4)
    agent = SAC.create(cfg, OBS, ACT, 0)
    agent, metrics = jax.jit(lambda a, b: a.update(b))(agent, batch(jax.random.key(0), utd=4))
    assert int(agent.critic.step) == 4 and int(agent.actor.step) == 1
    assert int(agent.log_temperature.step) == 1
    assert all(np.isfinite(float(v)) for v in metrics.values())


def test_learns_known_answer_bandit():
    """One-step task, reward -(a - 0.5)^2 per dimension: the greedy action must reach 0.5."""
    cfg = SACConfig(
        hidden_dims=(32, 32),
        num_critics=2,
        utd_ratio=1,
        batch_size=64,
        actor_lr=1e-3,
        critic_lr=1e-3,
    )
    agent = SAC.create(cfg, OBS, ACT, 0)

    @jax.jit
    def step(agent, key):
        k_obs, k_act = jax.random.split(key)
        obs = jax.random.normal(k_obs, (64, 3))
        actions = jax.random.uniform(k_act, (64, 2), minval=-1, maxval=1)
        b = {
            "observations": obs,
            "actions": actions,
            "rewards": -jnp.sum((actions - 0.5) ** 2, -1),
            "next_observations": obs,
            "masks": jnp.zeros(64),
        }
        return agent.update(jax.tree.map(lambda x: x[None], b))

    for key in jax.random.split(jax.random.key(0), 1500):
        agent, metrics = step(agent, key)
    greedy = agent.sample_actions(
        jax.random.normal(jax.random.key(9), (100, 3)), jax.random.key(0), deterministic=True
    )
    assert float(jnp.abs(greedy - 0.5).mean()) < 0.1
    assert float(metrics["critic_loss"]) < 0.05


def test_config_rejects_subset_larger_than_ensemble():
    with pytest.raises(ValueError, match="num_min_critics"):
        SACConfig(num_critics=2, num_min_critics=3)


def test_edac_diversity_term_by_hand():
    """EDAC: sum over pairs i != j of the cosine of grad_a Q_i and grad_a Q_j, averaged over the
    batch and divided by N - 1; added to the critic loss with weight eta / N."""
    n, eta = 3, 0.7
    cfg = dataclasses.replace(EDAC, **TINY, num_critics=n, num_min_critics=n, diversity_weight=eta)
    agent = SAC.create(cfg, OBS, ACT, 0)
    b = batch(jax.random.key(5))
    obs, actions = b["observations"], b["actions"]
    per_member = []
    for i in range(n):
        member = jax.tree.map(lambda p, i=i: p[i], agent.critic.params)
        q_i = lambda a, m=member: agent.critic.apply_fn.module.apply(m, obs, a).sum()  # noqa: E731
        per_member.append(np.asarray(jax.grad(q_i)(actions), np.float64))
    g = np.stack(per_member)
    g = g / (np.linalg.norm(g, axis=-1, keepdims=True) + 1e-10)
    expected = sum(np.sum(g[i] * g[j], -1) for i in range(n) for j in range(n) if i != j).mean() / (
        n - 1
    )
    diversity = agent.gradient_diversity(agent.critic.params, b)
    np.testing.assert_allclose(diversity, expected, rtol=1e-4)

    key = jax.random.key(1)
    loss, info = agent.critic_loss(agent.critic.params, b, key)
    plain = agent.replace(config=dataclasses.replace(cfg, diversity_weight=0.0))
    plain_loss, _ = plain.critic_loss(agent.critic.params, b, key)
    np.testing.assert_allclose(loss, plain_loss + eta / n * expected, rtol=1e-4)
    assert float(info["diversity"]) == pytest.approx(expected, rel=1e-4)


def test_edac_term_has_a_finite_gradient_where_a_critic_is_flat():
    """A critic whose action-gradient is zero on some row (dead ReLUs): the unit gradient is 0
    there and the term's gradient stays finite, as in PyTorch (it was NaN, and so the critic)."""
    cfg = dataclasses.replace(EDAC, **TINY, num_critics=2, num_min_critics=2)
    agent = SAC.create(cfg, OBS, ACT, 0)
    params = jax.tree.map(lambda p: p.at[0].set(0.0), agent.critic.params)  # member 0 is flat
    b = batch(jax.random.key(7))
    grads = jax.grad(agent.gradient_diversity)(params, b)
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))
    assert float(agent.gradient_diversity(params, b)) == 0.0  # no pair with a non-zero cosine


def test_edac_training_lowers_the_gradient_alignment():
    """Minimising the term alone (eta large, TD loss near-constant on a fixed batch) must make
    the critics' action-gradients less aligned than at initialisation."""
    cfg = dataclasses.replace(EDAC, **TINY, num_critics=4, num_min_critics=4, diversity_weight=50.0)
    agent = SAC.create(cfg, OBS, ACT, 0)
    b = batch(jax.random.key(6))
    before = float(agent.gradient_diversity(agent.critic.params, b))
    update = jax.jit(SAC.update_critic)
    for _ in range(100):
        agent, _ = update(agent, b)
    after = float(agent.gradient_diversity(agent.critic.params, b))
    assert after < before - 0.3, (before, after)


def test_config_rejects_a_diversity_term_without_an_ensemble():
    with pytest.raises(ValueError, match="diversity_weight"):
        SACConfig(num_critics=1, num_min_critics=1, diversity_weight=1.0)


def test_rlpd_manipulation_preset_is_the_fql_papers():
    """The FQL paper's RLPD on OGBench (seohongpark/fql agents/sac.py): 2 critics, their min,
    UTD 1, no entropy backup, GELU networks, small actor heads, log-std in [-5, 2]."""
    from o2o.agents.sac import RLPD_MANIPULATION
    from o2o.train.pipeline import task_preset

    assert task_preset("rlpd", "cube-double-play") == ("manipulation", RLPD_MANIPULATION)
    c = RLPD_MANIPULATION
    assert (c.num_critics, c.num_min_critics, c.utd_ratio, c.backup_entropy) == (2, 2, 1, False)
    assert (c.hidden_dims, c.activation, c.layer_norm_first) == ((512,) * 4, "gelu", False)
    assert (c.start_steps, c.offline_ratio, c.target_entropy_per_dim) == (0, 0.5, -0.5)
    small = dataclasses.replace(c, hidden_dims=(16, 16))
    agent = SAC.create(small, OBS, ACT, 0)
    usual = SAC.create(dataclasses.replace(small, actor_init_scale=1.0), OBS, ACT, 0)
    heads = agent.actor.params["params"]["Dense_0"]["kernel"]
    ratio = float(heads.std() / usual.actor.params["params"]["Dense_0"]["kernel"].std())
    assert ratio == pytest.approx(0.1, rel=1e-3)
    bias = {**agent.actor.params["params"]["Dense_1"], "bias": jnp.full(2, -9.0)}
    params = {"params": {**agent.actor.params["params"], "Dense_1": bias}}
    _, log_std = agent.actor.apply_fn(params, jnp.zeros((1, 3)))
    np.testing.assert_array_equal(log_std, -5.0)
