"""Flow-matching policies: the flow-matching loss by hand, Euler sampling, and flow BC on a
bimodal task where Gaussian BC fails."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from agent_helpers import bimodal_batch, bimodal_scores, optimised
from gymnasium.spaces import Box

from o2o.agents.bc import BC, BCConfig
from o2o.agents.flow_bc import FlowBC, FlowBCConfig
from o2o.nets.policies import FlowField, flow_actions, flow_matching_loss

OBS = Box(-np.inf, np.inf, (3,), np.float32)
ACT = Box(-1.0, 1.0, (2,), np.float32)


def test_flow_matching_loss_and_euler_sampling_by_hand():
    """The loss is (v(s, x_t, t) - (a - x_0))^2 with x_t on the straight path; Euler steps
    add v / steps from t = 0, and the result is clipped to [-1, 1]."""
    field = FlowField(2, (8,))
    obs, actions = jnp.ones((4, 3)), jnp.full((4, 2), 0.5)
    params = field.init(jax.random.key(0), obs, actions, jnp.zeros(4))
    key = jax.random.key(1)
    loss = flow_matching_loss(field.apply, params, obs, actions, key)
    key_noise, key_t = jax.random.split(key)
    x0 = jax.random.normal(key_noise, (4, 2))
    t = jax.random.uniform(key_t, (4,))
    x_t = (1 - t[:, None]) * x0 + t[:, None] * actions
    expected = (field.apply(params, obs, x_t, t) - (actions - x0)) ** 2
    np.testing.assert_allclose(loss, expected, rtol=1e-6)

    noise = jax.random.normal(jax.random.key(2), (4, 2))
    x = noise
    for i in range(3):
        x = x + field.apply(params, obs, x, jnp.full(4, i / 3)) / 3
    np.testing.assert_allclose(
        flow_actions(field.apply, params, obs, noise, 3), np.clip(x, -1, 1), rtol=1e-5, atol=1e-6
    )


def train(agent, steps: int, explore: float = 0.0):
    def step(agent, key):
        return agent.update(bimodal_batch(key, explore=explore))

    run = optimised(lambda a, keys: jax.lax.scan(step, a, keys))
    return run(agent, jax.random.split(jax.random.key(1), steps))


def test_flow_bc_covers_both_modes_where_gaussian_bc_fails():
    config = FlowBCConfig(hidden_dims=(64, 64, 64))  # GELU: at 64x64 it reaches 0.7 by then
    flow, info = train(FlowBC.create(config, OBS, ACT, 0), 1500)
    assert float(info["bc_flow_loss"][-100:].mean()) < float(info["bc_flow_loss"][:100].mean())
    reward, minority = bimodal_scores(flow)
    assert reward > 0.8 and minority > 0.3  # near a mode, and both modes used

    gaussian, _ = train(BC.create(BCConfig(hidden_dims=(64, 64)), OBS, ACT, 0), 1500)
    assert bimodal_scores(gaussian)[0] < 0.2  # its mean sits between the modes


def test_flow_bc_acts_in_bounds_and_has_no_q():
    agent = FlowBC.create(FlowBCConfig(hidden_dims=(8,), flow_steps=3), OBS, ACT, 0)
    obs = jax.random.normal(jax.random.key(0), (16, 3))
    far = agent.sample_actions(1e3 * obs, jax.random.key(1))
    assert far.shape == (16, 2) and float(jnp.abs(far).max()) <= 1.0
    actions = agent.sample_actions(obs, jax.random.key(1))  # the noise comes from the key
    assert not bool(jnp.array_equal(actions, agent.sample_actions(obs, jax.random.key(2))))
    assert bool(jnp.isnan(agent.q_values(obs, actions)).all())
    assert agent.on_switch() is agent


def test_flow_bc_config_errors():
    with pytest.raises(ValueError, match="flow_steps"):
        FlowBCConfig(flow_steps=0)


def test_layer_norm_goes_before_or_after_the_activation_as_each_reference():
    """RLPD normalises before ReLU; the FQL and QC references apply GELU, then LayerNorm, so
    their hidden features are normalised rows (the defaults of FQL and QC)."""
    from o2o.agents.fql import FQLConfig
    from o2o.agents.qc import QCConfig
    from o2o.nets.mlp import MLP

    x = jax.random.normal(jax.random.key(0), (4, 6))
    after = MLP((16, 16), activate_final=True, layer_norm=True, activation="gelu", norm_first=False)
    y = after.apply(after.init(jax.random.key(1), x), x)
    np.testing.assert_allclose(y.mean(-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.std(-1), 1.0, atol=1e-2)
    before = MLP((16, 16), activate_final=True, layer_norm=True)
    assert (before.apply(before.init(jax.random.key(1), x), x) >= 0).all()  # ReLU last
    assert FQLConfig().activation == QCConfig().activation == "gelu"
