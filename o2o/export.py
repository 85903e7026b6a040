"""A trained policy as an ONNX graph, to run outside Python and JAX (on a robot's computer).

The graph maps the raw observation, as the environment returns it, to the action in the
environment's units: the run's observation normalisation comes first, the agent's
deterministic action next, and last the map from the agent's [-1, 1] onto the environment's
action bounds, clipped to them. Chunked agents (QC) output the whole chunk, [B, horizon * A]
step-major, in the same units.

Agents whose acting draws noise (`o2o.agents.base.ActsFromNoise`: FQL, IDQL, QC, flow BC,
FPO) take it as inputs named `noise_normal` (standard normal) and `noise_uniform` (uniform on
[0, 1)), one draw per decision, so a deployment chooses its own random stream and the same noise
reproduces o2o's action; best-of-N agents (IDQL, QC) hold all N samples and the critic's
choice in the graph. The other agents act on the mean and take the observation only.

The converter is jax2onnx (the `export` extra), checked with onnxruntime. Parameters are baked
into the graph as constants; the batch dimension is free.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from o2o.agents.base import ActsFromNoise, trained_parts
from o2o.envs.tasks import ObservationNormalizer, Task
from o2o.nets.ensemble import EnsembleApply

OBSERVATION = "observation"
ACTION = "action"


def _requirements():
    try:
        import jax2onnx
        import onnxruntime
    except ImportError as error:
        raise ImportError(
            f"ONNX export needs the 'export' extra ({error.name} is missing): "
            "pip install 'o2o[export]'"
        ) from None
    return jax2onnx, onnxruntime


def noise_shapes(agent: Any, batch_shape: tuple) -> dict[str, tuple]:
    """The noise the agent's policy takes per decision, by kind ({} for a noiseless policy)."""
    return agent.noise_shapes(batch_shape) if isinstance(agent, ActsFromNoise) else {}


def _unrolled(agent: Any) -> Any:
    """The agent with every critic ensemble applied member by member (jax2onnx has no vmap
    rule for flax layers); the same function."""
    changes = {}
    for name, state in trained_parts(agent).items():
        if isinstance(state.apply_fn, EnsembleApply):
            changes[name] = state.replace(
                apply_fn=dataclasses.replace(state.apply_fn, unrolled=True)
            )
    return agent.replace(**changes) if changes else agent


@dataclasses.dataclass(frozen=True)
class PolicyIO:
    """What surrounds the agent in the graph: the observation's size and normalisation (the
    run's), and the environment's action bounds its [-1, 1] actions are mapped onto."""

    observation_dim: int
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    normalizer: ObservationNormalizer | None = None

    @classmethod
    def of(cls, task: Task) -> PolicyIO:
        """The task's, with its learning transforms (`o2o.train.pipeline.run_task`)."""
        obs_space, act_space = task.env_spaces()
        return cls(
            obs_space.shape[0],
            tuple(map(float, act_space.low)),
            tuple(map(float, act_space.high)),
            task.observation_normalizer,
        )


def policy_function(agent: Any, io: PolicyIO, unroll: bool = True) -> Callable[..., jax.Array]:
    """`f(observations, **noise) -> actions`: what the exported graph computes, in JAX (raw
    observations in, actions in the environment's units out; `noise` by kind, `noise_shapes`).
    `unroll`: critic ensembles member by member, as the converter needs them."""
    agent = _unrolled(agent) if unroll else agent
    low, high = np.asarray(io.action_low, np.float32), np.asarray(io.action_high, np.float32)
    unit = bool(np.allclose(low, -1.0) and np.allclose(high, 1.0))

    def act(observations: jax.Array, **noise: jax.Array) -> jax.Array:
        if io.normalizer is not None:
            mean = np.asarray(io.normalizer.mean, np.float32)
            std = np.asarray(io.normalizer.std, np.float32)
            observations = (observations - mean) / std
        if isinstance(agent, ActsFromNoise):
            by_kind = {k.removeprefix("noise_"): v for k, v in noise.items()}
            actions = agent.actions_from_noise(observations, by_kind)
        else:
            actions = agent.sample_actions(observations, jax.random.key(0), deterministic=True)
        chunk = actions.reshape(*actions.shape[:-1], -1, low.shape[0])  # QC: [.., h, A]
        if not unit:
            chunk = low + (chunk + 1.0) * (0.5 * (high - low))
        return jnp.clip(chunk, low, high).reshape(actions.shape)

    return act


def input_shapes(agent: Any, observation_dim: int, batch: int | str = "B") -> dict[str, tuple]:
    """The graph's inputs and their shapes (`batch`: a size, or a name for a free dimension)."""
    noise = noise_shapes(agent, (batch,))
    return {OBSERVATION: (batch, observation_dim)} | {f"noise_{k}": v for k, v in noise.items()}


def export_onnx(agent: Any, io: PolicyIO, path: Path, metadata: dict[str, Any]) -> Path:
    """Write the agent's policy as an ONNX model at `path`, with `metadata` (JSON-able values)
    in its metadata properties."""
    jax2onnx, _ = _requirements()
    shapes = input_shapes(agent, io.observation_dim)
    act = policy_function(agent, io)
    names = list(shapes)

    def graph(*inputs: jax.Array) -> jax.Array:
        return act(inputs[0], **dict(zip(names[1:], inputs[1:], strict=True)))

    model = jax2onnx.to_onnx(
        graph,
        list(shapes.values()),
        model_name=f"o2o_{metadata.get('algo', 'policy')}",
        input_names=names,
        output_names=[ACTION],
    )
    inputs = {name: list(shape) for name, shape in shapes.items()}
    for key, value in (metadata | {"inputs": inputs, "output": ACTION}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(model.SerializeToString())
    tmp.replace(path)
    return path


class OnnxPolicy:
    """An exported policy run by onnxruntime: `policy(observations, **noise) -> actions`."""

    def __init__(self, path: Path, threads: int = 1):
        _, onnxruntime = _requirements()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = threads
        options.log_severity_level = 3  # errors only (not its notes on unused constants)
        self.session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        self.input_names = [i.name for i in self.session.get_inputs()]
        meta = self.session.get_modelmeta().custom_metadata_map
        self.metadata = {k: _loads(v) for k, v in meta.items()}

    def __call__(self, observations: np.ndarray, **noise: np.ndarray) -> np.ndarray:
        feed = {OBSERVATION: np.asarray(observations, np.float32)}
        feed |= {k: np.asarray(v, np.float32) for k, v in noise.items()}
        missing = set(self.input_names) - set(feed)
        if missing:
            raise ValueError(f"the policy needs inputs {sorted(missing)} (see its metadata)")
        return self.session.run([ACTION], feed)[0]


def _loads(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def random_noise(agent: Any, batch: int, seed: int) -> dict[str, np.ndarray]:
    """Noise for `batch` observations, as the graph's inputs take it (a numpy stream)."""
    rng = np.random.default_rng(seed)
    draw = {"normal": rng.standard_normal, "uniform": rng.random}
    return {
        f"noise_{kind}": draw[kind](shape).astype(np.float32)
        for kind, shape in noise_shapes(agent, (batch,)).items()
    }


def max_difference(agent: Any, io: PolicyIO, policy: OnnxPolicy, observations: np.ndarray) -> float:
    """Largest |ONNX action - o2o action| over `observations` (raw), with shared noise; o2o's
    action as it evaluates (ensembles vmapped)."""
    noise = random_noise(agent, len(observations), seed=0)
    expected = jax.jit(policy_function(agent, io, unroll=False))(jnp.asarray(observations), **noise)
    return float(np.abs(policy(observations, **noise) - np.asarray(expected)).max())
