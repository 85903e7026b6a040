"""BC: both heads' losses by hand in NumPy, a known policy recovered, scanned minibatches."""

import dataclasses
import functools

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from o2o.agents.bc import BC, BC_DETERMINISTIC, BC_GAUSSIAN, BCConfig

OBS = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
ACT = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
HEADS = ["gaussian", "deterministic"]


def np_mlp(layers: list[dict], x: np.ndarray, activate_final: bool) -> np.ndarray:
    """Dense + ReLU layers in float64, from flax parameters."""
    for i, layer in enumerate(layers):
        x = x @ np.float64(layer["kernel"]) + np.float64(layer["bias"])
        if i + 1 < len(layers) or activate_final:
            x = np.maximum(x, 0.0)
    return x


def hand_loss(agent: BC, obs: np.ndarray, actions: np.ndarray) -> float:
    p = agent.actor.params["params"]
    if agent.config.head == "deterministic":
        pred = np.tanh(np_mlp([p["Dense_0"], p["Dense_1"]], obs, activate_final=False))
        return float(np.mean((pred - actions) ** 2))
    h = np_mlp([p["MLP_0"]["Dense_0"]], obs, activate_final=True)
    mean = np_mlp([p["Dense_0"]], h, activate_final=False)
    log_std = np.clip(np_mlp([p["Dense_1"]], h, activate_final=False), -20.0, 2.0)
    bound = float(np.float32(1 - 1e-6))  # the documented clip, rounded as float32 rounds it
    a = np.clip(actions, -bound, bound)
    u = np.arctanh(a)
    log_normal = -0.5 * ((u - mean) / np.exp(log_std)) ** 2 - log_std - 0.5 * np.log(2 * np.pi)
    log_prob = np.sum(log_normal - np.log(1.0 - a**2), -1)  # change of variables a = tanh(u)
    return float(-log_prob.mean())


@pytest.mark.parametrize("head", HEADS)
def test_loss_matches_numpy_by_hand(head):
    agent = BC.create(BCConfig(head=head, hidden_dims=(5,)), OBS, ACT, 0)
    obs = np.array([[0.5, -1.0, 2.0], [0.0, 0.3, -0.7], [1.5, 1.0, 0.2], [-2.0, 0.1, 0.4]])
    # The last row sits on the bounds, where atanh is infinite without the clip.
    actions = np.array([[0.2, -0.5], [0.9, 0.0], [-0.8, 0.35], [1.0, -1.0]])
    batch = {"observations": jnp.float32(obs), "actions": jnp.float32(actions)}
    loss_and_grad = jax.jit(jax.value_and_grad(agent.bc_loss, has_aux=True))
    (loss, info), grads = loss_and_grad(agent.actor.params, batch)
    np.testing.assert_allclose(float(loss), hand_loss(agent, obs, actions), rtol=1e-5)
    assert float(info["bc_loss"]) == float(loss)
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("head", HEADS)
def test_recovers_known_policy(head):
    """Data from a = tanh(W s + 0.1 eps): the greedy action must approach tanh(W s)."""
    w = jnp.array([[0.8, -0.5, 0.3], [-0.2, 0.6, 0.9]])
    cfg = BCConfig(head=head, hidden_dims=(32, 32), lr=3e-3, batch_size=128)
    agent = BC.create(cfg, OBS, ACT, 0)

    def step(agent, key):
        k_obs, k_noise = jax.random.split(key)
        obs = jax.random.normal(k_obs, (1, 128, 3))
        actions = jnp.tanh(obs @ w.T + 0.1 * jax.random.normal(k_noise, (1, 128, 2)))
        return agent.update({"observations": obs, "actions": actions})

    train = jax.jit(lambda a, keys: jax.lax.scan(step, a, keys))
    agent, info = train(agent, jax.random.split(jax.random.key(1), 300))
    obs = jnp.float32(np.random.default_rng(2).normal(size=(256, 3)))
    greedy = agent.sample_actions(obs, jax.random.key(0), deterministic=True)
    assert float(jnp.abs(greedy - jnp.tanh(obs @ w.T)).mean()) < 0.05
    if head == "gaussian":  # maximum likelihood also recovers the noise scale, std 0.1
        assert abs(float(info["log_std"][-1]) - np.log(0.1)) < 0.2


@pytest.mark.parametrize("head", HEADS)
def test_update_scans_minibatches_and_acts(head):
    agent = BC.create(BCConfig(head=head, hidden_dims=(5,)), OBS, ACT, 0)
    rng, n = np.random.default_rng(0), 16
    batch = {
        "observations": jnp.float32(rng.normal(size=(2, n, 3))),
        "actions": jnp.float32(rng.uniform(-1, 1, (2, n, 2))),
        "rewards": jnp.zeros((2, n)),
        "next_observations": jnp.zeros((2, n, 3)),
        "masks": jnp.ones((2, n)),
    }
    new, metrics = jax.jit(lambda a, b: a.update(b))(agent, batch)
    assert int(new.actor.step) == 2
    assert all(m.shape == () and np.isfinite(float(m)) for m in metrics.values())
    # The scan equals two sequential steps, and its metrics are their mean.
    step = jax.jit(lambda a, b: a.update_step(b))
    a1, i1 = step(agent, jax.tree.map(lambda x: x[0], batch))
    a2, i2 = step(a1, jax.tree.map(lambda x: x[1], batch))
    close = functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6)
    jax.tree.map(close, new.actor.params, a2.actor.params)
    np.testing.assert_allclose(metrics["bc_loss"], (i1["bc_loss"] + i2["bc_loss"]) / 2, rtol=1e-5)

    obs = batch["observations"][0]
    act = jax.jit(lambda a, o, k: a.sample_actions(o, k))
    acts = [act(new, obs, jax.random.key(s)) for s in (0, 1)]
    assert acts[0].shape == (n, 2) and all(bool((jnp.abs(a) <= 1).all()) for a in acts)
    assert bool(jnp.array_equal(acts[0], acts[1])) == (head == "deterministic")
    q = new.q_values(obs, acts[0])
    assert q.shape == (n,) and bool(jnp.isnan(q).all())
    assert new.on_switch() is new


def test_registered_with_reference_recipes():
    import o2o.agents.bc  # noqa: F401  (registers bc, bc-det)
    from o2o.agents.base import get_agent

    assert get_agent("bc").agent_cls is BC and get_agent("bc").default_config == BC_GAUSSIAN
    assert get_agent("bc-det").default_config == BC_DETERMINISTIC
    assert (BC_GAUSSIAN.head, BC_GAUSSIAN.lr) == ("gaussian", 1e-3)  # jaxrl2 BCLearner
    assert (BC_DETERMINISTIC.head, BC_DETERMINISTIC.lr) == ("deterministic", 3e-4)  # CORL
    for cfg in (BC_GAUSSIAN, BC_DETERMINISTIC):
        assert (cfg.hidden_dims, cfg.batch_size, cfg.utd_ratio) == ((256, 256), 256, 1)
        assert (cfg.offline_ratio, cfg.start_steps, cfg.discount) == (1.0, 0, 0.99)
    with pytest.raises(ValueError, match="head"):
        dataclasses.replace(BC_GAUSSIAN, head="beta")
