"""TD3+BC and ReBRAC: both losses against numpy by hand, the actor's fixed point on a bandit, the
delayed actor, scanned minibatches, the next-actions requirement, the registry."""

import dataclasses
import functools

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from agent_helpers import random_batch

from o2o.agents.td3bc import REBRAC, TD3BC, TD3BC_DEFAULT

batch = functools.partial(random_batch, next_actions=True, terminals=2)
OBS = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
ACT = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
# ReBRAC with larger penalties than its defaults, so that a wrong penalty shows in the losses.
# One network size throughout: each new parameter shape costs eager compilations in `create`.
PRESETS = {
    "td3bc": dataclasses.replace(TD3BC_DEFAULT, hidden_dims=(16, 16)),
    "rebrac": dataclasses.replace(REBRAC, hidden_dims=(16, 16), actor_bc=0.7, critic_bc=0.3),
}


def np_mlp(p: dict, x: np.ndarray, activate_final: bool) -> np.ndarray:
    """o2o's MLP in float64: Dense, ReLU, then LayerNorm (eps 1e-6) if present (ReBRAC's
    critics put it after the activation, as CORL's)."""
    n = sum(k.startswith("Dense") for k in p)
    for i in range(n):
        x = x @ np.float64(p[f"Dense_{i}"]["kernel"]) + np.float64(p[f"Dense_{i}"]["bias"])
        if i + 1 < n or activate_final:
            x = np.maximum(x, 0.0)
            if f"LayerNorm_{i}" in p:
                ln = p[f"LayerNorm_{i}"]
                x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6)
                x = x * np.float64(ln["scale"]) + np.float64(ln["bias"])
    return x


def np_qs(params, obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """Q_j(s, a) for both stacked critics: shape [2, batch]."""
    p = params["params"]
    x = np.concatenate([obs, actions], -1)
    out = []
    for j in range(2):
        pj = jax.tree.map(lambda v, j=j: np.asarray(v)[j], p)
        h = np_mlp(pj["MLP_0"], x, activate_final=True)
        out.append(np_mlp({"Dense_0": pj["Dense_0"]}, h, activate_final=False)[:, 0])
    return np.stack(out)


def np_pi(params, obs: np.ndarray) -> np.ndarray:
    return np.tanh(np_mlp(params["params"], obs, activate_final=False))


def np_penalty(cfg, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    sq = (x - y) ** 2
    return sq.mean(-1) if cfg.bc_reduction == "mean" else sq.sum(-1)


def balance_critics(params, obs: np.ndarray, actions: np.ndarray):
    """Critic 2 shifted so that Q_1 < Q_2 on half the rows: min_j Q_j and Q_1 then differ."""
    qs = np_qs(params, obs, actions)
    params = jax.tree.map(np.array, params)  # a writable numpy copy
    params["params"]["Dense_0"]["bias"][1] += np.median(qs[0] - qs[1])
    return params


@pytest.mark.parametrize("name", PRESETS)
def test_losses_match_numpy_by_hand(name):
    cfg = PRESETS[name]
    agent = TD3BC.create(cfg, OBS, ACT, 0)
    b = batch(1)
    o, a, s2 = (np.float64(b[k]) for k in ("observations", "actions", "next_observations"))
    noise = np.random.default_rng(2).normal(size=(8, 2)) * 2.0  # many beyond the 0.5 clip
    # Targets differ from the online networks, so using the wrong set shows; the target actor's
    # output bias pushes a' near +-1, so the clip to [-1, 1] after the smoothing noise acts.
    # (numpy throughout: every eager JAX op on a new shape costs a compilation)
    target_actor = jax.tree.map(lambda p: np.asarray(p) * 1.3, agent.target_actor_params)
    target_actor["params"]["Dense_2"]["bias"] += np.float32([2.0, -2.0])
    a2 = np.clip(np_pi(target_actor, s2) + np.clip(0.2 * noise, -0.5, 0.5), -1.0, 1.0)
    assert (np.abs(a2) == 1.0).any()  # the outer clip is exercised
    target_critic = jax.tree.map(lambda p: np.asarray(p) * 1.5, agent.target_critic_params)
    critic = balance_critics(agent.critic.params, o, np_pi(agent.actor.params, o))
    agent = agent.replace(
        critic=agent.critic.replace(params=critic),
        target_actor_params=target_actor,
        target_critic_params=balance_critics(target_critic, s2, a2),
    )

    (loss, info), grads = jax.jit(jax.value_and_grad(agent.critic_loss, has_aux=True))(
        agent.critic.params, b, np.float32(noise)
    )
    next_q = np_qs(agent.target_critic_params, s2, a2).min(0)
    next_q -= cfg.critic_bc * np_penalty(cfg, a2, np.float64(b["next_actions"]))
    y = b["rewards"] + 0.99 * b["masks"] * next_q
    expected = ((np_qs(agent.critic.params, o, a) - y) ** 2).mean(-1).sum()
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    np.testing.assert_allclose(float(info["target_mean"]), y.mean(), rtol=1e-5, atol=1e-6)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))

    (loss, info) = jax.jit(agent.actor_loss)(agent.actor.params, b)
    pi = np_pi(agent.actor.params, o)
    qs = np_qs(agent.critic.params, o, pi)
    q = qs[0] if name == "td3bc" else qs.min(0)  # TD3+BC: Q_1; ReBRAC: min_j Q_j
    lam = cfg.alpha / np.abs(q).mean()
    expected = np.mean(-lam * q + cfg.actor_bc * np_penalty(cfg, pi, a))
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    np.testing.assert_allclose(float(info["lambda"]), lam, rtol=1e-5)
    np.testing.assert_allclose(float(info["bc_mse"]), ((pi - a) ** 2).mean(), rtol=1e-5)
    q_values = jax.jit(TD3BC.q_values)(agent, b["observations"], np.float32(pi))
    np.testing.assert_allclose(q_values, qs.min(0), rtol=1e-5, atol=1e-6)


def train_bandit(cfg, low: float, high: float, reward, steps: int = 1000) -> np.ndarray:
    """One state, terminal transitions, dataset actions ~ U[low, high]^2; the greedy action."""
    agent = TD3BC.create(cfg, OBS, ACT, 0)
    n = cfg.batch_size

    def step(agent, key):
        actions = jax.random.uniform(key, (1, n, 2), minval=low, maxval=high)
        b = {
            "observations": jnp.ones((1, n, 3)),
            "actions": actions,
            "rewards": reward(actions),
            "next_observations": jnp.ones((1, n, 3)),
            "next_actions": actions,
            "masks": jnp.zeros((1, n)),
        }
        return agent.update(b)

    train = jax.jit(lambda a, keys: jax.lax.scan(step, a, keys))
    agent, _ = train(agent, jax.random.split(jax.random.key(1), steps))
    return np.asarray(greedy_action(agent, np.ones((1, 3), np.float32))[0])


greedy_action = jax.jit(functools.partial(TD3BC.sample_actions, key=None, deterministic=True))
BANDIT = dict(batch_size=128, actor_lr=1e-3, critic_lr=1e-2)


@pytest.mark.parametrize(
    ("name", "coefs", "expected"),
    [
        # Per dimension, -lambda / 2 + (pi - 0.3) = 0, lambda = 2.5 / Q(pi) = 2.5 / (10 + pi):
        # pi = 0.420; pure BC (lambda 0) would give 0.3, pure RL the data's edge 0.6 or beyond.
        ("td3bc", {}, 0.420),
        # ReBRAC: -1 / (2 (10 + pi)) + 2 beta (pi - 0.3) = 0 with beta = 0.25: pi = 0.396
        ("rebrac", dict(actor_bc=0.25), 0.396),
    ],
)
def test_actor_settles_at_the_bc_weighted_fixed_point(name, coefs, expected):
    """Data a ~ U[0, 0.6]^2 around 0.3, r = 10 + mean(a): the actor trades Q against the BC
    pull. Without the stop-gradient on lambda the Q term has no gradient (Q > 0): pi -> 0.3."""
    cfg = dataclasses.replace(PRESETS[name], **BANDIT, **coefs)
    greedy = train_bandit(cfg, 0.0, 0.6, lambda a: 10.0 + a.mean(-1))
    np.testing.assert_allclose(greedy, expected, atol=0.025)


def test_pure_rl_reaches_the_reward_peak():
    """alpha huge (the BC term negligible) on data covering [-1, 1]^2: pi -> argmax r. The
    reward is a cone: a ReLU critic locates its kink better than a flat quadratic top."""
    cfg = dataclasses.replace(PRESETS["td3bc"], **BANDIT, alpha=1e3)
    peak = np.array([-0.5, 0.4])
    greedy = train_bandit(cfg, -1.0, 1.0, lambda a: 2.0 - jnp.abs(a - peak).sum(-1))
    np.testing.assert_allclose(greedy, peak, atol=0.05)


def test_actor_and_targets_change_only_every_policy_freq_updates():
    cfg = dataclasses.replace(PRESETS["td3bc"], policy_freq=3)
    agent = TD3BC.create(cfg, OBS, ACT, 0)
    update = jax.jit(lambda a, b: a.update(b))
    changed = []
    for k in range(6):
        b = batch(k, utd=1)
        del b["next_actions"]  # TD3+BC has no critic penalty, so needs no next actions
        new, _ = update(agent, b)
        changed.append(
            [
                not all(jax.tree.leaves(jax.tree.map(np.array_equal, x, y)))
                for x, y in [
                    (agent.critic.params, new.critic.params),
                    (agent.actor.params, new.actor.params),
                    (agent.target_actor_params, new.target_actor_params),
                    (agent.target_critic_params, new.target_critic_params),
                ]
            ]
        )
        agent = new
    assert changed == [[True, d, d, d] for d in (False, False, True, False, False, True)]
    assert (int(agent.critic.step), int(agent.actor.step)) == (6, 2)


def test_update_scans_minibatches_and_acts():
    agent = TD3BC.create(PRESETS["rebrac"], OBS, ACT, 0)
    b = batch(3, utd=2)
    new, metrics = jax.jit(lambda a, b: a.update(b))(agent, b)
    assert set(metrics) == {
        "critic_loss",
        "actor_loss",
        "bc_mse",
        "actor_bc",
        "q_mean",
        "lambda",
        "target_mean",
    }
    assert all(m.shape == () and np.isfinite(float(m)) for m in metrics.values())
    assert (int(new.critic.step), int(new.actor.step)) == (2, 1)
    # The scan equals two sequential steps (the second one also updates the actor).
    step = jax.jit(lambda a, b: a.update_step(b))
    a1, i1 = step(agent, jax.tree.map(lambda x: x[0], b))
    a2, i2 = step(a1, jax.tree.map(lambda x: x[1], b))
    close = functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6)
    jax.tree.map(close, (new.actor.params, new.critic.params), (a2.actor.params, a2.critic.params))
    for k in metrics:
        close(metrics[k], (np.asarray(i1[k]) + np.asarray(i2[k])) / 2)

    @jax.jit
    def act(agent, obs):
        noisy = [agent.sample_actions(obs, jax.random.key(s)) for s in (0, 1)]
        greedy = agent.sample_actions(obs, jax.random.key(0), deterministic=True)
        return noisy, greedy, agent.q_values(obs, greedy)

    noisy, greedy, q = jax.tree.map(np.asarray, act(new, b["observations"][0]))
    assert noisy[0].shape == greedy.shape == (8, 2)
    assert all((np.abs(a) <= 1).all() for a in [*noisy, greedy])
    assert not np.array_equal(noisy[0], noisy[1])
    assert 0.05 < np.std(noisy[0] - greedy) < 0.15  # TD3's exploration std 0.1
    assert q.shape == (8,) and np.isfinite(q).all()


def test_critic_penalty_needs_next_actions_until_the_switch():
    agent = TD3BC.create(PRESETS["rebrac"], OBS, ACT, 0)
    b = batch(4, utd=1)
    del b["next_actions"]
    with pytest.raises(ValueError, match="next_actions"):
        agent.update(b)
    online = agent.on_switch(agent.config)
    assert online.config.critic_bc == 0.0 and online.config.actor_bc == 0.7  # CORL finetune
    _, metrics = jax.jit(lambda a, b: a.update(b))(online, b)
    assert np.isfinite(float(metrics["critic_loss"]))
    td3bc = TD3BC.create(PRESETS["td3bc"], OBS, ACT, 0)
    assert td3bc.on_switch().config is td3bc.config


def test_rebrac_actor_penalty_decays_online():
    agent = TD3BC.create(
        dataclasses.replace(PRESETS["rebrac"], online_bc_decay_steps=4), OBS, ACT, 0
    )
    agent = agent.replace(critic=agent.critic.replace(step=jnp.int32(10)))  # 10 offline updates
    assert float(agent.actor_bc) == pytest.approx(0.7)  # no decay before the switch
    online = agent.on_switch()
    weights = [
        float(online.replace(critic=online.critic.replace(step=jnp.int32(10 + k))).actor_bc)
        for k in range(6)
    ]
    np.testing.assert_allclose(weights, 0.7 * np.array([1, 0.75, 0.5, 0.5, 0.5, 0.5]), rtol=1e-6)
    assert TD3BC_DEFAULT.online_bc_decay_steps is None and REBRAC.online_bc_decay_steps == 10**6


def test_registered_with_reference_recipes():
    import o2o.agents.td3bc  # noqa: F401  (registers td3bc, rebrac)
    from o2o.agents.base import get_agent

    spec = get_agent("td3bc")
    assert spec.agent_cls is TD3BC and spec.default_config == TD3BC_DEFAULT
    assert get_agent("rebrac").agent_cls is TD3BC and get_agent("rebrac").default_config == REBRAC
    td3bc = dict(
        hidden_dims=(256, 256),
        critic_layer_norm=False,
        actor_lr=3e-4,
        critic_lr=3e-4,
        discount=0.99,
        tau=0.005,
        policy_noise=0.2,
        noise_clip=0.5,
        policy_freq=2,
        alpha=2.5,
        actor_bc=1.0,
        critic_bc=0.0,
        bc_reduction="mean",
        actor_q="q1",
        exploration_noise=0.1,
        batch_size=256,
        utd_ratio=1,
        offline_ratio=1.0,
        start_steps=0,
    )
    assert {k: getattr(TD3BC_DEFAULT, k) for k in td3bc} == td3bc
    rebrac = td3bc | dict(
        hidden_dims=(256, 256, 256),
        critic_layer_norm=True,
        actor_lr=1e-3,
        critic_lr=1e-3,
        alpha=1.0,
        actor_bc=0.001,
        critic_bc=0.01,
        bc_reduction="sum",
        actor_q="min",
        batch_size=1024,
        offline_ratio=0.5,
    )
    assert {k: getattr(REBRAC, k) for k in rebrac} == rebrac
    assert REBRAC.online_critic_bc == 0.0
    with pytest.raises(ValueError, match="actor_q"):
        dataclasses.replace(TD3BC_DEFAULT, actor_q="mean")


def test_rebrac_declares_next_actions_in_the_phases_whose_penalty_is_on():
    """The data layer provides `next_actions` where the agent says it needs them: offline for
    ReBRAC's critic penalty, online only if the penalty stays on (CORL turns it off)."""
    rebrac = TD3BC.create(PRESETS["rebrac"], OBS, ACT, 0)
    assert rebrac.needs("offline").batch_fields == {"next_actions"}
    assert rebrac.needs("online").batch_fields == set()
    kept = dataclasses.replace(PRESETS["rebrac"], online_critic_bc=0.01)
    assert TD3BC.create(kept, OBS, ACT, 0).needs("online").batch_fields == {"next_actions"}
    td3bc = TD3BC.create(PRESETS["td3bc"], OBS, ACT, 0)
    assert (
        td3bc.needs("offline").batch_fields == set()
        and td3bc.needs("offline").normalize_observations
    )


def test_rebrac_manipulation_presets_are_the_fql_papers():
    """Table 6 of the FQL paper: (beta_actor, beta_critic) per OGBench suite, kept online;
    CORL's and the FQL repository's critics put LayerNorm after the activation."""
    from o2o.agents.td3bc import REBRAC
    from o2o.train.pipeline import task_preset

    expected = {
        "cube-single-play": (1.0, 0.0),
        "cube-double-play": (0.1, 0.0),
        "scene-play-singletask-task4": (0.1, 0.01),
        "puzzle-3x3-play": (0.3, 0.01),
        "puzzle-4x4-noisy": (0.3, 0.01),
    }
    for task, (actor_bc, critic_bc) in expected.items():
        config = task_preset("rebrac", task)[1]
        assert (config.actor_bc, config.critic_bc, config.online_critic_bc) == (
            actor_bc,
            critic_bc,
            critic_bc,
        ), task
        assert (config.activation, config.hidden_dims, config.actor_init_scale) == (
            "gelu",
            (512,) * 4,
            0.01,
        )
        assert config.online_bc_decay_steps is None and not config.layer_norm_first
    assert not REBRAC.layer_norm_first and REBRAC.activation == "relu"


def test_actor_last_layer_starts_small_with_its_init_scale():
    from o2o.nets.mlp import MLP

    x = jnp.ones((1, 5))
    small = MLP((64, 64, 64), output_init_scale=0.01).init(jax.random.key(0), x)["params"]
    usual = MLP((64, 64, 64)).init(jax.random.key(0), x)["params"]
    ratio = float(small["Dense_2"]["kernel"].std() / usual["Dense_2"]["kernel"].std())
    assert ratio == pytest.approx(0.1, rel=1e-3)  # sqrt of the variance scale
    np.testing.assert_array_equal(small["Dense_0"]["kernel"], usual["Dense_0"]["kernel"])


@pytest.mark.parametrize("weight_init", ["torch", "xavier"])
def test_weight_init_reaches_actor_and_critics(weight_init):
    """`weight_init="torch"` (d3rlpy's networks) gives every layer of the actor and of both
    critics PyTorch's uniform biases in +-1/sqrt(fan_in); the default keeps zero biases."""
    config = dataclasses.replace(REBRAC, hidden_dims=(32, 32), weight_init=weight_init)
    agent = TD3BC.create(config, OBS, ACT, 0)
    params = {"actor": agent.actor.params, "critic": agent.critic.params}
    biases = [
        (path, leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(params)
        if path[-1].key == "bias" and path[-2].key.startswith("Dense")  # not LayerNorm's
    ]
    assert len(biases) == 6  # 3 layers each: the actor, the critics (stacked)
    for path, bias in biases:
        assert np.all(bias == 0) == (weight_init == "xavier"), path
