"""Fitted Q evaluation (FQE): a policy's value estimated from logged data alone, before it acts.

Recipe (Le, Voloshin and Yue 2019; the FQE of Paine et al. 2020 and of the DOPE benchmark, Fu
et al. 2021): a critic of its own, fitted on the dataset's transitions by the TD error of
Q(s, a) against r + gamma m Q'(s', pi(s')), with a Polyak-averaged target network; the estimate
is the mean of Q(s0, pi(s0)) over the first states of the dataset's episodes: the policy's
expected discounted return from the data's start distribution, in the environment's reward
units. The same quantity for the logged behaviour, the discounted Monte-Carlo return of the
data from those states, is reported beside it, so the estimate reads as "better or worse than
the data" as well.

Stopping. The estimate is kept once it has settled: after at least `min_steps` updates, it
moved by at most `tolerance` of itself over the last `patience` measurements (one every
`eval_interval` updates); at `steps` updates the last one is kept, marked unsettled. Early
stopping on held-out data guards against overfitting: a tenth of the episodes is held out, and
if their TD error, relative to their mean squared TD target, rises to `overfit_ratio` times its
lowest, the estimate at that lowest is kept. The held-out TD error cannot decide alone: the
critic tracks its slowly moving target closely, so the error is as small while values are
still propagating from zero (measured on hopper-medium: the estimate at the error's lowest,
18k updates, was half the value reached at 100k, which was within 3% of the measured return).

The critic sees observations standardised by the training split's mean and std, and rewards
in the environment's units. A policy is given as a function of raw observations: the caller
folds in the run's normalisation. Stochastic policies (the flows) are evaluated on one action
per state, drawn once. Deviation from the references, which fit a fixed number of updates: the
stopping rule above, so that a run stops once its estimate has settled.

Horizon: the TD target bootstraps through time-outs, so the estimate is the infinite-horizon
discounted value, where a measured return stops at the time limit T. The share beyond it is
gamma^T: nothing at 0.99 and T = 1000 (4e-5), but half or more at 0.999 and T of a few hundred
(ReBRAC's maze recipe); `o2o fqe` says so when gamma^T exceeds 1%.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from o2o.data.dataset import Dataset
from o2o.envs.tasks import ObservationNormalizer
from o2o.logging import progress_bar
from o2o.nets.ensemble import StateActionValue

FQE_FILE = "fqe.json"  # beside a run's summary.json
Policy = Callable[[np.ndarray], np.ndarray]  # raw observations [n, obs_dim] -> actions


@dataclasses.dataclass(frozen=True)
class FQEConfig:
    """FQE's critic and its budget; the defaults follow the references' MLP critics."""

    hidden_dims: tuple[int, ...] = (256, 256)
    lr: float = 3e-4
    batch_size: int = 256
    tau: float = 0.005
    discount: float = 0.99
    steps: int = 100_000  # at most
    min_steps: int = 20_000  # no stopping before (see the module notes)
    eval_interval: int = 2_000
    patience: int = 5  # measurements over which the estimate must have settled
    tolerance: float = 0.01  # settled: moved by at most this share of itself
    overfit_ratio: float = 2.0  # held-out TD error this many times its lowest: overfitting
    holdout_fraction: float = 0.1

    def __post_init__(self):
        if not 0 < self.discount < 1:
            raise ValueError(f"discount {self.discount}: FQE needs 0 < discount < 1")
        if not 0 < self.holdout_fraction < 1:
            raise ValueError(f"holdout_fraction {self.holdout_fraction}: must lie in (0, 1)")
        if min(self.steps, self.eval_interval, self.batch_size, self.patience) < 1:
            raise ValueError("steps, eval_interval, batch_size and patience must be >= 1")
        if not (0 < self.tolerance < 1 and self.overfit_ratio > 1):
            raise ValueError("tolerance must lie in (0, 1) and overfit_ratio exceed 1")
        if self.min_steps > self.steps:
            raise ValueError(f"min_steps {self.min_steps} exceeds steps {self.steps}")


def start_rows(dataset: Dataset, terminals_inside_recordings: bool = False) -> np.ndarray:
    """The rows episodes start at; with `terminals_inside_recordings` (OGBench single tasks,
    whose successes are terminals inside a recording that goes on) the rows recordings start
    at, since the state after a success is no reset."""
    if not terminals_inside_recordings:
        return np.array([episode.start for episode in dataset.episodes()], int)
    return np.flatnonzero(np.concatenate([[True], dataset.recording_ends[:-1]]))


def _actions(policy: Policy, observations: np.ndarray, batch: int = 4096) -> np.ndarray:
    parts = [policy(observations[i : i + batch]) for i in range(0, len(observations), batch)]
    return np.concatenate(parts).astype(np.float32) if parts else observations[:, :0]


def _tables(dataset: Dataset, policy: Policy, normalizer: ObservationNormalizer) -> dict:
    """The transitions on the device with the policy's next actions; observations normalised."""
    return {
        "observations": jnp.asarray(normalizer(dataset.observations)),
        "actions": jnp.asarray(dataset.actions),
        "rewards": jnp.asarray(dataset.rewards),
        "next_observations": jnp.asarray(normalizer(dataset.next_observations)),
        "next_actions": jnp.asarray(_actions(policy, dataset.next_observations)),
        "masks": jnp.asarray(dataset.masks),
    }


def fitted_q_evaluation(
    policy: Policy,
    dataset: Dataset,
    config: FQEConfig = FQEConfig(),
    seed: int = 0,
    terminals_inside_recordings: bool = False,
) -> dict[str, Any]:
    """FQE of `policy` on `dataset` (raw observations, rewards in the environment's units):
    `value` (the estimate), `behaviour_value` (the data's own), the held-out TD error, the
    step the estimate was kept at, and the curve of both every `eval_interval` updates (the
    last block shorter where `steps` is not a multiple). The start states are those of
    `start_rows` (the task's `terminals_inside_recordings`)."""
    episodes = len(dataset.episodes())
    held_count = max(1, round(config.holdout_fraction * episodes))
    if episodes < 2 or held_count >= episodes:
        raise ValueError(
            f"{dataset.source}: FQE needs at least 2 episodes to hold some out ({episodes} found)"
        )
    train, held = dataset.hold_out(held_count)
    normalizer = ObservationNormalizer.fit(train.observations)
    data, held_data = _tables(train, policy, normalizer), _tables(held, policy, normalizer)
    rows = start_rows(dataset, terminals_inside_recordings)
    starts = dataset.observations[rows]
    start_obs = jnp.asarray(normalizer(starts))
    start_actions = jnp.asarray(_actions(policy, starts))
    behaviour = dataset.returns_to_go(config.discount)[rows]

    critic = StateActionValue(config.hidden_dims)
    key_init, key = jax.random.split(jax.random.key(seed))
    params = critic.init(key_init, data["observations"][:1], data["actions"][:1])
    tx = optax.adam(config.lr)
    state = (params, params, tx.init(params))  # (params, target, optimiser state)

    def td_errors(params, target, batch) -> tuple[jax.Array, jax.Array]:
        """(mean squared TD error, mean squared target)."""
        next_q = critic.apply(target, batch["next_observations"], batch["next_actions"])
        y = jax.lax.stop_gradient(batch["rewards"] + config.discount * batch["masks"] * next_q)
        q = critic.apply(params, batch["observations"], batch["actions"])
        return jnp.mean((q - y) ** 2), jnp.mean(y**2)

    def td_error(params, target, batch) -> jax.Array:
        return td_errors(params, target, batch)[0]

    def update(state, key):
        params, target, opt_state = state
        rows = jax.random.randint(key, (config.batch_size,), 0, len(train))
        batch = jax.tree.map(lambda x: x[rows], data)
        loss, grads = jax.value_and_grad(td_error)(params, target, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        target = optax.incremental_update(params, target, config.tau)
        return (params, target, opt_state), loss

    @functools.partial(jax.jit, static_argnums=2)
    def block(state, key, length: int):
        state, losses = jax.lax.scan(update, state, jax.random.split(key, length))
        params, target, _ = state
        value = critic.apply(params, start_obs, start_actions).mean()
        held_td, held_scale = td_errors(params, target, held_data)
        return state, losses.mean(), held_td / held_scale, value

    curve, best, stopped, step = [], None, "budget", 0
    with progress_bar() as bar:
        task = bar.add_task("fqe", total=config.steps, info="")
        while step < config.steps:
            key, key_block = jax.random.split(key)
            length = min(config.eval_interval, config.steps - step)
            state, train_td, held_td, value = block(state, key_block, length)
            step += length
            point = {
                "step": step,
                "value": float(value),
                "train_td": float(train_td),
                "holdout_td": float(held_td),  # relative: / mean squared target
            }
            curve.append(point)
            bar.update(task, completed=step, info=f"value {point['value']:.1f}")
            if not all(np.isfinite(v) for v in point.values()):
                raise ValueError(f"FQE diverged at step {step} (TD error {point['train_td']:g})")
            if step < config.min_steps:
                continue
            if best is None or point["holdout_td"] < best["holdout_td"]:
                best = point
            if point["holdout_td"] > config.overfit_ratio * best["holdout_td"]:
                stopped = "overfitting"
                break
            if len(curve) > config.patience:
                before = curve[-1 - config.patience]["value"]
                if abs(point["value"] - before) <= config.tolerance * abs(point["value"]):
                    stopped = "converged"
                    break
    kept = best if stopped == "overfitting" else curve[-1]
    return {
        "value": kept["value"],
        "stopped": stopped,
        "behaviour_value": float(behaviour.mean()),
        "holdout_td": kept["holdout_td"],
        "step": kept["step"],
        "steps_run": step,
        "discount": config.discount,
        "start_states": len(starts),
        "holdout_episodes": held_count,
        "config": dataclasses.asdict(config),
        "curve": curve,
    }


def agent_policy(agent: Any, normalizer: ObservationNormalizer | None, seed: int = 0) -> Policy:
    """The agent acting deterministically on raw observations (`normalizer`: the run's), with
    fresh noise per call for the flows; refused for chunked agents (QC: its Q and its actions
    are over chunks, and FQE values one action per state)."""
    if agent.needs("offline").horizon > 1:
        raise ValueError(
            f"{type(agent).__name__} acts in chunks of actions: its Q is over chunks, and FQE "
            "of a chunked policy is not implemented"
        )
    act = jax.jit(lambda obs, key: agent.sample_actions(obs, key, True))
    key, calls = jax.random.key(seed), iter(range(2**31))

    def policy(observations: np.ndarray) -> np.ndarray:
        obs = observations if normalizer is None else normalizer(observations)
        return np.asarray(act(jnp.asarray(obs), jax.random.fold_in(key, next(calls))))

    return policy


def start_state_q(
    agent: Any,
    normalizer: ObservationNormalizer | None,
    dataset: Dataset,
    policy: Policy,
    terminals_inside_recordings: bool = False,
) -> float:
    """The agent's own critic's value of `policy` at the dataset's start states (`start_rows`;
    its learning units): mean Q(s0, pi(s0)), what FQE estimates independently."""
    starts = dataset.observations[start_rows(dataset, terminals_inside_recordings)]
    obs = starts if normalizer is None else normalizer(starts)
    q = agent.q_values(jnp.asarray(obs), jnp.asarray(_actions(policy, starts)))
    return float(jnp.mean(q))
