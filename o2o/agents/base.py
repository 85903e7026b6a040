"""The agent interface every algorithm implements, and the registry that names them.

An agent is an immutable pytree (`flax.struct.PyTreeNode`); see DESIGN.md:
- `create(config, obs_space, act_space, seed)` builds it;
- `update(batch)` is pure and jittable; batch leaves have a leading axis of `utd_ratio`
  minibatches, consumed inside `jax.lax.scan`;
- `sample_actions(obs, key, deterministic)` acts;
- `q_values(obs, actions)` feeds the Q-bias diagnostics;
- `on_switch(config)` applies what changes at the offline-to-online switch;
- `needs(phase)` declares, as one `Needs` value per phase, what the rest of the system must
  provide: the data layer, the loops and the pipeline read it and never inspect an agent's
  config fields or class to guess.

Agents whose acting draws noise even when deterministic (the flows: FQL, IDQL, QC, flow BC,
FPO) act through `ActsFromNoise`: `noise_shapes(batch_shape)` names the noise one decision draws
and `actions_from_noise(obs, noise)` is the rest, a deterministic function, so an exported policy
(`o2o.export`) can take the noise as an input and reproduce o2o's actions exactly.

Chunked agents (QC) need a `horizon` > 1: `sample_actions` returns that many actions flattened
step-major, [..., horizon * A], executed open-loop; `q_values` takes such chunks; batches are
windows of `horizon` steps (`o2o.data.buffer.ReplayBuffer.sample_windows`).

Each algorithm registers its reference recipes as named presets: per task family
(`locomotion`, `navigation`: `o2o.envs.tasks.Task.family`), and per task or dataset where the
reference tunes one (SAC-N's ensemble size, ReBRAC's penalties); `AgentSpec.preset` picks the
most specific one for a task.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Literal, Protocol

import gymnasium as gym
import jax
import jax.numpy as jnp
import optax
from flax.training.train_state import TrainState


class AgentConfig(Protocol):
    """Fields the training loop reads from every agent's config (the data/UTD recipe)."""

    batch_size: int
    utd_ratio: int
    offline_ratio: float
    start_steps: int
    discount: float


Phase = Literal["offline", "online"]
BATCH_FIELDS = ("next_actions", "mc_returns")  # what `Needs.batch_fields` may ask for


@dataclasses.dataclass(frozen=True)
class Needs:
    """What an agent requires of the data layer, the loops and the pipeline in one phase."""

    batch_fields: frozenset[str] = frozenset()
    """Batch fields beyond (s, a, r, s', m): `next_actions` (the logged action at s'; online,
    the agent's own action at s', as CORL's ReBRAC), `mc_returns` (the discounted Monte-Carlo
    return from s; online, written when the episode ends)."""
    loop: Literal["off_policy", "on_policy"] = "off_policy"
    """Online: a replay buffer and updates every step (`OnlineLoop`), or rollouts from
    vectorised environments that are used once (`OnPolicyLoop`)."""
    horizon: int = 1
    """Actions per chunk; batches are windows of `horizon` steps, with episode `ends`."""
    random_warmup: bool = True
    """Whether the `start_steps` warm-up acts uniformly at random (else with the policy, and
    only the updates wait)."""
    normalize_observations: bool = False
    """States standardised by the dataset's mean and std, offline, online and in evaluation."""
    reward_scale_by_return_range: bool = False
    """Rewards scaled so that the dataset's episode returns span 1000 (IQL's locomotion
    recipe), offline and online."""
    reward_scale: float = 1.0
    """A constant the rewards are multiplied by after the task's transform (and the return-range
    scale), offline and online: Cal-QL's `reward_scale` on OGBench manipulation."""
    policy_format: Literal["tanh_gaussian"] | None = None
    """The policy file `--save-policies` writes (`tanh_gaussian`: the zoo's, `o2o.zoo`);
    None: the agent's policy has no file format."""

    def __post_init__(self):
        unknown = set(self.batch_fields) - set(BATCH_FIELDS)
        if unknown:
            raise ValueError(f"unknown batch fields {sorted(unknown)}; known: {BATCH_FIELDS}")
        if self.horizon < 1:
            raise ValueError(f"horizon={self.horizon} must be at least 1")
        if not self.reward_scale > 0:
            raise ValueError(f"reward_scale={self.reward_scale} must be positive")


# Agent fields whose valid range follows from their name, whatever the algorithm: checked by
# `check_agent_config` before anything runs (the message gives the flag, the range and the value).
_POSITIVE_INT = ("batch_size", "utd_ratio", "num_", "flow_steps", "rollout_length", "_samples")
_UNIT_INTERVAL = ("offline_ratio",)  # [0, 1]
_OPEN_UNIT = ("discount", "tau")  # (0, 1]


def check_agent_config(config: Any) -> None:
    """Refuse agent hyperparameters no recipe can train with (a learning rate, batch size or
    ensemble size that is not positive, an empty or zero-width network, a discount or
    offline_ratio outside its range), naming the `--agent.*` flag; ValueError."""
    problems = []
    for field in dataclasses.fields(config):
        name, value = field.name, getattr(config, field.name)
        flag = f"--agent.{name.replace('_', '-')}"
        if isinstance(value, bool) or value is None:
            continue
        if name.endswith("hidden_dims") and (not value or min(value) < 1):
            problems.append(f"{flag} {' '.join(map(str, value))}: give one or more widths >= 1")
        elif isinstance(value, int) and any(part in name for part in _POSITIVE_INT):
            if value < 1:
                problems.append(f"{flag} {value}: must be at least 1")
        elif (name == "lr" or name.endswith("_lr")) and not value > 0:
            problems.append(f"{flag} {value}: a learning rate must be positive")
        elif name in _UNIT_INTERVAL and not 0 <= value <= 1:
            problems.append(f"{flag} {value}: must lie in [0, 1]")
        elif name in _OPEN_UNIT and not 0 < value <= 1:
            problems.append(f"{flag} {value}: must lie in (0, 1]")
        elif name.endswith("_steps") and isinstance(value, int) and value < 0:
            problems.append(f"{flag} {value}: must not be negative")
    if problems:
        raise ValueError("invalid agent hyperparameters: " + "; ".join(problems))


class Agent(Protocol):
    config: AgentConfig

    @classmethod
    def create(
        cls, config: Any, obs_space: gym.spaces.Box, act_space: gym.spaces.Box, seed: int
    ) -> Agent: ...

    def update(self, batch: dict[str, jax.Array]) -> tuple[Agent, dict[str, jax.Array]]: ...

    def sample_actions(
        self, observations: jax.Array, key: jax.Array, deterministic: bool = False
    ) -> jax.Array: ...

    def q_values(self, observations: jax.Array, actions: jax.Array) -> jax.Array: ...

    def on_switch(self, config: Any = None) -> Agent: ...

    def needs(self, phase: Phase) -> Needs: ...


NOISE_KINDS = ("normal", "uniform")  # standard normal; uniform on [0, 1)


def draw_noise(key: jax.Array, shapes: dict[str, tuple[int, ...]]) -> dict[str, jax.Array]:
    """Noise of the given shapes, each entry of the distribution its name says (`NOISE_KINDS`):
    one key per entry in the order of `NOISE_KINDS`, `key` itself when there is one entry."""
    kinds = [kind for kind in NOISE_KINDS if kind in shapes]
    unknown = set(shapes) - set(kinds)
    if unknown:
        raise ValueError(f"noise {sorted(unknown)}: the kinds are {', '.join(NOISE_KINDS)}")
    keys = [key] if len(kinds) == 1 else list(jax.random.split(key, len(kinds)))
    draw = {"normal": jax.random.normal, "uniform": jax.random.uniform}
    return {kind: draw[kind](k, shapes[kind]) for kind, k in zip(kinds, keys, strict=True)}


class ActsFromNoise:
    """Mixin for agents whose action is a deterministic function of the observation and noise
    drawn at each decision; they define `noise_shapes` and `actions_from_noise`."""

    def noise_shapes(self, batch_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        """The noise one decision for observations of `batch_shape` draws, by kind."""
        raise NotImplementedError

    def actions_from_noise(self, observations: jax.Array, noise: dict[str, jax.Array]) -> jax.Array:
        """The actions for `observations` given the decision's noise (`noise_shapes`)."""
        raise NotImplementedError

    def sample_actions(
        self, observations: jax.Array, key: jax.Array, deterministic: bool = False
    ) -> jax.Array:
        """`actions_from_noise` with noise drawn from `key`; `deterministic` changes nothing
        (a flow has no mode to return: starting from zero noise lands between symmetric
        modes), so evaluation passes a fixed key sequence."""
        shapes = self.noise_shapes(observations.shape[:-1])
        return self.actions_from_noise(observations, draw_noise(key, shapes))


def compiled_create(create):
    """Decorates an agent's `create` (under `@classmethod`) to build its arrays in one compiled
    call. Run eagerly, network initialisation compiles every operation on its own: about a
    hundred small compilations, several seconds per agent on a CPU, where one takes well
    under one. The result is the same agent (static fields such as optimisers pass through)."""

    @functools.wraps(create)
    def wrapper(cls, config, obs_space, act_space, seed):
        return jax.jit(lambda: create(cls, config, obs_space, act_space, seed))()

    return wrapper


def scan_update_steps(agent: Any, batch: dict[str, jax.Array]) -> tuple[Any, dict[str, jax.Array]]:
    """`agent.update_step` once per minibatch on the batch's leading axis, in `jax.lax.scan`;
    the metrics averaged over the minibatches."""
    agent, info = jax.lax.scan(lambda a, b: a.update_step(b), agent, batch)
    return agent, jax.tree.map(jnp.mean, info)


def gradient_step(state: TrainState, loss_fn, *args) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimiser step of `state` on `loss_fn(params, *args) -> (loss, metrics)`."""
    grads, info = jax.grad(loss_fn, has_aux=True)(state.params, *args)
    return state.apply_gradients(grads=grads), info


def trained_parts(agent: Any) -> dict[str, TrainState]:
    """The agent's parts with an optimiser (actor, critic, value, temperature...), by field."""
    fields = dataclasses.fields(agent)
    return {
        f.name: getattr(agent, f.name)
        for f in fields
        if isinstance(getattr(agent, f.name), TrainState)
    }


def switch_parts(agent: Any, freeze: tuple[str, ...] = (), reset_optimizers: bool = False) -> Any:
    """Generic switch hooks: `freeze` named parts (their optimiser becomes a no-op, so online
    updates leave them as pre-trained, e.g. QC's prior or a frozen actor), and re-initialise
    every other part's optimiser state (Adam moments from the offline phase) if asked."""
    parts = trained_parts(agent)
    unknown = [name for name in freeze if name not in parts]
    if unknown:
        raise ValueError(
            f"--freeze {' '.join(unknown)}: {type(agent).__name__} has no trained part of that "
            f"name; its parts: {', '.join(parts)}"
        )
    changes = {}
    for name, state in parts.items():
        if name in freeze:
            tx = optax.set_to_zero()
            changes[name] = state.replace(tx=tx, opt_state=tx.init(state.params))
        elif reset_optimizers:
            changes[name] = state.replace(opt_state=state.tx.init(state.params))
    return agent.replace(**changes)


DEFAULT_PRESET = "default"


@dataclasses.dataclass(frozen=True)
class AgentSpec:
    """A registered algorithm: its agent class and its reference recipes, by preset name (a
    task family, a task or a dataset); the first is the default."""

    agent_cls: type
    presets: dict[str, Any]
    summary: str

    @property
    def default_config(self) -> Any:
        return next(iter(self.presets.values()))

    @property
    def default_preset(self) -> str:
        return next(iter(self.presets))

    def preset(self, *keys: str) -> tuple[str, Any]:
        """(name, config) of the first of `keys` with a recipe (most specific first: the
        dataset, the task, the family; `o2o.envs.tasks.Task.preset_keys`), else the default."""
        for key in keys:
            if key in self.presets:
                return key, self.presets[key]
        return self.default_preset, self.default_config


AGENTS: dict[str, AgentSpec] = {}


def register(name: str, agent_cls: type, presets: Any, summary: str) -> None:
    """Register algorithm `name`: `presets` maps preset names to configs, the first the
    default (a single config: the only preset, named `default`)."""
    if not isinstance(presets, dict):
        presets = {DEFAULT_PRESET: presets}
    AGENTS[name] = AgentSpec(agent_cls, dict(presets), summary)


def get_agent(name: str) -> AgentSpec:
    """The registered algorithm `name`, or an error listing the known ones."""
    if name not in AGENTS:
        known = ", ".join(sorted(AGENTS))
        raise ValueError(f"unknown algorithm '{name}'; known algorithms: {known}")
    return AGENTS[name]
