"""ONNX export (`o2o.export`, `o2o export`): every agent's graph reproduces o2o's own actions,
with the observation normalisation and the action bounds folded in and the noise as inputs."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from agent_helpers import trained_run
from test_conformance import ACT, CASES, OBS, tiny

from o2o.agents import AGENTS
from o2o.agents.base import ActsFromNoise
from o2o.cli import main
from o2o.envs.tasks import ObservationNormalizer
from o2o.train.pipeline import trained_agent

export = pytest.importorskip("o2o.export")
pytest.importorskip("jax2onnx", reason="ONNX export needs the 'export' extra")
pytest.importorskip("onnxruntime", reason="ONNX export needs the 'export' extra")

# Every registered agent, and IDQL resampling by expectile (its draw is a uniform input).
EXPORTED = CASES | {"idql-expectile": ("idql", {"selection": "expectile"})}
# A non-trivial frame around the agent: per-dimension normalisation, asymmetric action bounds.
NORMALIZER = ObservationNormalizer((1.0, -2.0, 0.5), (2.0, 0.5, 3.0))
IO = export.PolicyIO(3, action_low=(-2.0, 0.0), action_high=(2.0, 3.0), normalizer=NORMALIZER)


def o2o_actions(agent, observations: np.ndarray, noise: dict[str, np.ndarray]) -> np.ndarray:
    """The agent's own action in the environment's units, computed outside `o2o.export`: its
    deterministic action on the normalised observation, mapped affinely onto the bounds."""
    obs = jnp.asarray(NORMALIZER(observations))
    if isinstance(agent, ActsFromNoise):
        kinds = {k.removeprefix("noise_"): jnp.asarray(v) for k, v in noise.items()}
        unit = agent.actions_from_noise(obs, kinds)
    else:
        unit = agent.sample_actions(obs, jax.random.key(3), deterministic=True)
    unit = np.asarray(unit).reshape(len(observations), -1, 2)
    low, high = np.array(IO.action_low), np.array(IO.action_high)
    return np.clip(low + (unit + 1) / 2 * (high - low), low, high).reshape(len(observations), -1)


@pytest.mark.parametrize("case", sorted(EXPORTED))
def test_every_agent_exports_a_graph_that_matches_its_actions(case, tmp_path):
    algo, changes = EXPORTED[case]
    agent = AGENTS[algo].agent_cls.create(tiny(algo, **changes), OBS, ACT, 0)
    path = export.export_onnx(agent, IO, tmp_path / "policy.onnx", {"algo": algo})
    policy = export.OnnxPolicy(path)
    rng = np.random.default_rng(1)
    observations = (rng.normal(size=(1000, 3)) * 3).astype(np.float32)
    noise = export.random_noise(agent, len(observations), seed=2)
    actions = policy(observations, **noise)
    horizon = agent.needs("online").horizon
    assert actions.shape == (1000, 2 * horizon)
    assert np.abs(actions - o2o_actions(agent, observations, noise)).max() < 1e-4
    # The batch is free: one observation at a time, as a robot acts.
    one = policy(observations[:1], **{k: v[:1] for k, v in noise.items()})
    np.testing.assert_allclose(one, actions[:1], atol=1e-5)
    # What the graph needs is what the agent draws: noise inputs for flows only.
    assert set(policy.input_names) == {"observation"} | set(noise)
    assert bool(noise) == isinstance(agent, ActsFromNoise)
    assert policy.metadata["algo"] == algo
    assert policy.metadata["inputs"]["observation"] == ["B", 3]


def test_noise_inputs_reproduce_and_vary():
    """The same noise gives the same chunk; other noise another (the flow samples)."""
    agent = AGENTS["flow_bc"].agent_cls.create(tiny("flow_bc"), OBS, ACT, 0)
    act = jax.jit(export.policy_function(agent, IO))
    obs = np.zeros((4, 3), np.float32)
    a = act(obs, **export.random_noise(agent, 4, seed=0))
    b = act(obs, **export.random_noise(agent, 4, seed=0))
    c = act(obs, **export.random_noise(agent, 4, seed=1))
    np.testing.assert_array_equal(a, b)
    assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-3


def test_unrolled_ensembles_compute_what_vmapped_ones_do():
    agent = AGENTS["qc"].agent_cls.create(tiny("qc"), OBS, ACT, 0)
    obs = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    noise = export.random_noise(agent, 5, seed=0)
    unrolled = export.policy_function(agent, IO)(obs, **noise)
    vmapped = export.policy_function(agent, IO, unroll=False)(obs, **noise)
    np.testing.assert_allclose(unrolled, vmapped, atol=1e-6)


def test_export_names_what_is_missing(tmp_path, monkeypatch):
    """A run without checkpoints and a machine without the extra each get one clear line."""
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SystemExit) as stop:
        main(["export", str(tmp_path / "nowhere")])
    assert stop.value.code == 2
    monkeypatch.setitem(sys.modules, "jax2onnx", None)  # import fails as when not installed
    with pytest.raises(ImportError, match=r"pip install 'o2o\[export\]'"):
        export.export_onnx(None, IO, tmp_path / "x.onnx", {})


def test_a_run_without_its_phase_says_which_it_has(tmp_path):
    out = trained_run(tmp_path, "bc")
    agent, phase, progress = trained_agent(out)
    assert phase == "offline" and progress["updates"] == int(agent.actor.step) == 5
    with pytest.raises(FileNotFoundError, match="--phase offline"):
        trained_agent(out, "online")
