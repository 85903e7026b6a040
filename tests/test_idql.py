"""IDQL: the flow BC actor loss and IQL's critic step, greedy and expectile selection by hand,
the bimodal known answer where IQL fails, the frozen actor online, config errors, registry."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from agent_helpers import bimodal_batch, bimodal_reward, np_, optimised, random_batch
from gymnasium.spaces import Box

from o2o.agents.idql import (
    IDQL,
    IDQL_ANTMAZE,
    IDQL_LOCOMOTION,
    IDQLConfig,
    expectile_probabilities,
)
from o2o.agents.iql import IQL, IQL_ANTMAZE
from o2o.nets.policies import flow_actions, flow_matching_loss

OBS = Box(-np.inf, np.inf, (3,), np.float32)
ACT = Box(-1.0, 1.0, (2,), np.float32)
TINY = IDQLConfig(
    hidden_dims=(16, 16),
    actor_hidden_dims=(16, 16),
    batch_size=8,
    num_samples=8,
    flow_steps=3,
    expectile=0.9,
    actor_tau=0.1,
)


def scaled(params, factor: float):
    return jax.tree.map(lambda p: p * factor, params)


@pytest.fixture(scope="module")
def agent():
    """A tiny agent whose acting copies (EMA actor, target critics) differ from the trained
    ones, so that using the wrong set shows."""
    agent = IDQL.create(TINY, OBS, ACT, 0)
    return agent.replace(
        target_actor_params=scaled(agent.target_actor_params, 1.5),
        target_critic_params=scaled(agent.target_critic_params, 1.5),
    )


def leaves_close(a, b, **tol) -> None:
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np_(x), np_(y), **tol)


def moved(new, old) -> list[bool]:
    """Per parameter array, whether the update changed it."""
    pairs = zip(jax.tree.leaves(new), jax.tree.leaves(old), strict=True)
    return [not np.array_equal(a, b) for a, b in pairs]


def test_presets():
    assert IDQL_LOCOMOTION.expectile == 0.7 and IDQL_LOCOMOTION.reward_scale_by_return_range
    assert IDQL_ANTMAZE.expectile == 0.9 and not IDQL_ANTMAZE.reward_scale_by_return_range
    assert (IDQL_LOCOMOTION.num_samples, IDQL_LOCOMOTION.selection) == (32, "greedy")
    assert IDQL_LOCOMOTION.offline_ratio == 0.5 and not IDQL_LOCOMOTION.online_actor_updates
    assert IDQL_LOCOMOTION.actor_hidden_dims == (512,) * 4 and IDQL_LOCOMOTION.flow_steps == 10


@pytest.mark.parametrize(("done", "rate"), [(0, 1.0), (3, 0.25), (50, 0.1)])
def test_ema_is_the_mean_so_far_then_actor_tau(agent, done, rate):
    """After the actor's k-th update the EMA moves at max(actor_tau, 1/k): it held 0.999^k of
    its random initial weights before (13% after 2,000 updates), acting partly at random."""
    start = agent.replace(
        actor=agent.actor.replace(step=jnp.asarray(done, agent.actor.step.dtype)),
        target_actor_params=scaled(agent.target_actor_params, 1.5),
    )
    new, _ = jax.jit(type(start).update_step)(start, random_batch(0))
    ema = jax.tree.map(
        lambda a, t: rate * np_(a) + (1 - rate) * np_(t),
        new.actor.params,
        start.target_actor_params,
    )
    leaves_close(new.target_actor_params, ema, rtol=1e-5, atol=1e-6)


def test_update_step_flow_bc_actor_iql_critic_and_ema(agent):
    """The actor descends the flow-matching loss on dataset actions under a fresh split of
    `rng`; V, Q and the target critics take IQL's step; the EMA follows the new actor."""
    b = random_batch(0)
    rng, key = jax.random.split(agent.rng)
    iql = IQL.create(TINY, OBS, ACT, 0).replace(
        critic=agent.critic, target_critic_params=agent.target_critic_params, value=agent.value
    )

    @jax.jit
    def run(agent, iql):
        def loss(params):
            obs, actions = b["observations"], b["actions"]
            return flow_matching_loss(agent.actor.apply_fn, params, obs, actions, key).mean()

        new, info = agent.update_step(b)
        params = agent.actor.params
        keyed_loss = agent.replace(rng=key).actor_loss(params, b)[0]
        expected = agent.actor.apply_gradients(grads=jax.grad(loss)(params))
        return new, info, iql.update_step(b), keyed_loss, loss(params), expected.params

    new, info, (iql_new, iql_info), keyed_loss, loss, expected = run(agent, iql)
    assert bool(jnp.all(jax.random.key_data(new.rng) == jax.random.key_data(rng)))
    np.testing.assert_allclose(keyed_loss, loss, rtol=1e-6)
    leaves_close(new.actor.params, expected, rtol=1e-5, atol=1e-7)
    assert all(moved(new.actor.params, agent.actor.params))
    rate = max(0.1, 1 / int(new.actor.step))  # the EMA's warm-up: the mean so far, at first
    ema = jax.tree.map(
        lambda a, t: rate * np_(a) + (1 - rate) * np_(t),
        new.actor.params,
        agent.target_actor_params,
    )
    leaves_close(new.target_actor_params, ema, rtol=1e-5, atol=1e-7)

    for part in ("value", "critic"):
        leaves_close(getattr(new, part).params, getattr(iql_new, part).params, rtol=1e-5)
    leaves_close(new.target_critic_params, iql_new.target_critic_params, rtol=1e-5)
    for name in ("value_loss", "critic_loss"):
        np.testing.assert_allclose(info[name], iql_info[name], rtol=1e-5)


act = jax.jit(lambda agent, obs, key: agent.sample_actions(obs, key))
ROWS = 2000  # states per selection test (one shape: one compilation of the by-hand candidates)


@functools.partial(jax.jit, static_argnums=3)
def candidates_by_hand(agent, obs, key, with_uniform: bool = False):
    """The flow's candidates from the EMA actor and their min target-critic Q, [n, N]. Their
    noise comes from `key` itself, or with expectile selection (which also draws a uniform)
    from the first of two keys split from it (`o2o.agents.base.draw_noise`)."""
    n = agent.config.num_samples
    key_noise = jax.random.split(key)[0] if with_uniform else key
    tiled = jnp.repeat(obs[:, None], n, axis=1)
    noise = jax.random.normal(key_noise, (obs.shape[0], n, 2))
    cands = flow_actions(agent.actor.apply_fn, agent.target_actor_params, tiled, noise, 3)
    q = agent.critic.apply_fn(agent.target_critic_params, tiled, cands).min(0)
    return cands, q


def test_greedy_selection_takes_the_best_candidate_by_target_q(agent):
    obs = jax.random.normal(jax.random.key(0), (ROWS, 3))
    key = jax.random.key(1)
    actions = act(agent, obs, key)
    cands, q = map(np_, candidates_by_hand(agent, obs, key))
    best = q.argmax(1)
    assert len(set(best.tolist())) > 3  # the choice depends on Q, not on the position
    np.testing.assert_allclose(actions, cands[np.arange(ROWS), best], rtol=1e-5, atol=1e-6)
    assert actions.shape == (ROWS, 2) and float(jnp.abs(act(agent, 1e3 * obs, key)).max()) <= 1.0


def test_expectile_probabilities_by_hand():
    probs = expectile_probabilities(jnp.array([[1.0, 2.0, 3.0, 4.0]]), jnp.array([2.5]), 0.9)
    np.testing.assert_allclose(probs, [[0.05, 0.05, 0.45, 0.45]], rtol=1e-6)


def test_expectile_selection_resamples_by_the_expectile_weights(agent):
    """One state, V set to the median of the candidates' Q: each row keeps a candidate with
    Q > V with probability tau k / (tau k + (1 - tau)(N - k)), k of its N above V (about 0.9
    here; greedy would give 1, uniform 0.5)."""
    expectile = dataclasses.replace(agent.config, selection="expectile")
    obs = jnp.ones((ROWS, 3))
    key = jax.random.key(2)
    cands, q = map(np_, candidates_by_hand(agent, obs, key, True))
    v0 = float(agent.value.apply_fn(agent.value.params, obs[:1])[0])
    params = jax.tree.map(lambda p: p, agent.value.params)  # a copy to edit
    params["params"]["Dense_0"]["bias"] += np.median(q) - v0
    shifted = agent.replace(value=agent.value.replace(params=params), config=expectile)
    v = float(shifted.value.apply_fn(params, obs[:1])[0])

    actions = np_(act(shifted, obs, key))
    chosen = np.abs(cands - actions[:, None]).sum(-1).argmin(1)
    above = q > v
    k = above.sum(1)
    p_above = 0.9 * k / (0.9 * k + 0.1 * (8 - k))
    observed = above[np.arange(ROWS), chosen].mean()
    assert 0.75 < p_above.mean() < 0.95
    assert observed == pytest.approx(p_above.mean(), abs=0.03)  # 4.5 standard errors


def train(agent, steps: int):
    def step(agent, key):
        return agent.update(bimodal_batch(key, n=128))

    run = optimised(lambda a, keys: jax.lax.scan(step, a, keys))
    return run(agent, jax.random.split(jax.random.key(1), steps))


def test_idql_acts_on_a_mode_where_iql_falls_between():
    """Bimodal one-step data, 30% uniform random actions: IDQL's flow proposes actions of both
    modes and the critic keeps a rewarded one; IQL's Gaussian mean lies between the modes."""
    tiny = dict(hidden_dims=(64, 64), decay_steps=None)
    # actor_tau: an EMA over the last ~50 of 500 updates (IDQL's 0.001 is for 10^6 updates).
    config = dataclasses.replace(IDQL_ANTMAZE, **tiny, actor_hidden_dims=(64, 64), actor_tau=0.02)
    idql, info = train(IDQL.create(config, OBS, ACT, 0), 500)
    assert float(info["actor_loss"][-100:].mean()) < float(info["actor_loss"][:100].mean())
    iql, _ = train(IQL.create(dataclasses.replace(IQL_ANTMAZE, **tiny), OBS, ACT, 0), 500)

    obs = jax.random.normal(jax.random.key(7), (512, 3))
    actions = act(idql, obs, jax.random.key(8))
    positive = float((actions.mean(-1) > 0).mean())
    assert float(bimodal_reward(actions).mean()) > 0.8
    assert 0.15 < positive < 0.85  # both modes
    iql_actions = iql.sample_actions(obs, jax.random.key(8), deterministic=True)
    assert float(bimodal_reward(iql_actions).mean()) < 0.2
    assert float(jnp.abs(iql_actions).mean()) < 0.4  # between the modes at -0.8 and +0.8


def test_on_switch_freezes_the_actor_unless_asked(agent):
    """Online, an update leaves the actor and its EMA as they were and trains the critic;
    with `online_actor_updates` the switch changes nothing (the actor trains as offline)."""
    switched = agent.on_switch()
    new, _ = jax.jit(lambda a, b: a.update_step(b))(switched, random_batch(1))
    assert not any(moved(new.actor.params, switched.actor.params))
    assert not any(moved(new.target_actor_params, switched.target_actor_params))
    assert all(moved(new.critic.params, switched.critic.params))

    keep_training = dataclasses.replace(agent.config, online_actor_updates=True)
    assert agent.on_switch(keep_training) is agent
    assert agent.replace(config=keep_training).on_switch().config is keep_training


@pytest.mark.parametrize(
    "field, value",
    [("flow_steps", 0), ("num_samples", 0), ("selection", "softmax"), ("actor_tau", 1.5)],
)
def test_config_errors(field, value):
    with pytest.raises(ValueError, match=field):
        IDQLConfig(**{field: value})
    with pytest.raises(ValueError, match="expectile"):  # IQL's checks still run
        IDQLConfig(expectile=1.0)
