"""The agent interface every algorithm implements, and the registry that names them.

An agent is an immutable pytree (`flax.struct.PyTreeNode`); see DESIGN.md:
- `create(config, obs_space, act_space, seed)` builds it;
- `update(batch)` is pure and jittable; batch leaves have a leading axis of `utd_ratio`
  minibatches, consumed inside `jax.lax.scan`;
- `sample_actions(obs, key, deterministic)` acts;
- `q_values(obs, actions)` feeds the Q-bias diagnostics;
- `on_switch(config)` applies what changes at the offline-to-online switch.

Chunked agents (QC) set `horizon` on their config: `sample_actions` returns that many actions
flattened step-major, [..., horizon * A], executed open-loop; `q_values` takes such chunks;
batches are windows of `horizon` steps (`o2o.data.buffer.ReplayBuffer.sample_windows`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Protocol

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


def chunk_horizon(config: Any) -> int:
    """Actions per chunk of an agent with this config: its `horizon`, 1 for single-step agents."""
    return getattr(config, "horizon", 1)


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


@dataclasses.dataclass(frozen=True)
class AgentSpec:
    """A registered algorithm: its agent class and its default (reference) config."""

    agent_cls: type
    default_config: Any
    summary: str


AGENTS: dict[str, AgentSpec] = {}


def register(name: str, agent_cls: type, default_config: Any, summary: str) -> None:
    AGENTS[name] = AgentSpec(agent_cls, default_config, summary)


def get_agent(name: str) -> AgentSpec:
    """The registered algorithm `name`, or an error listing the known ones."""
    if name not in AGENTS:
        known = ", ".join(sorted(AGENTS))
        raise ValueError(f"unknown algorithm '{name}'; known algorithms: {known}")
    return AGENTS[name]
