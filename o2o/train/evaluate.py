"""Evaluation on fixed seeds: returns, normalised score, and Q-bias on the rollouts and on
held-out dataset episodes.

A chunked agent (`horizon` h > 1) executes each chunk it draws open-loop, drawing the next when
the chunk is used up; its Q-bias compares Q(s_t, a_{t:t+h}) with the Monte-Carlo return from
t at the chunk starts of the rollouts (chunks cut by the episode's end are left out), and on
held-out episodes at every step with h logged actions left in its episode.

Policies act with `deterministic=True`. Agents for which that still draws noise (flows: FQL,
IDQL, QC, flow BC, FPO) get fresh noise at every decision, as the references evaluate, from a
key sequence that restarts at each evaluation, so evaluations stay reproducible."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from o2o.data.dataset import Dataset, discounted_returns
from o2o.diagnostics.bias import q_bias_stats, valid_for_bias
from o2o.envs.tasks import Task


class Diverged(ValueError):
    """Training produced non-finite losses; the run stops, its last good checkpoint kept."""


# How far beyond the largest discounted return its rewards allow (max|r| / (1 - discount)) the
# mean Q may go before a run is called diverged. Wide: soft Q values add an entropy bonus, and a
# critic on its way to NaN passes any finite bound within a few thousand updates.
Q_MARGIN = 100.0


def q_limit(buffers: list[Any], discount: float) -> float:
    """The |Q| beyond which training has diverged, from the rewards the critic learns from
    (replay buffers or datasets in the agent's units); inf without rewards or with discount 1."""
    rewards = [np.asarray(b.data["rewards"][: int(b.size)]) for b in buffers]
    largest = max((float(np.abs(r).max(initial=0.0)) for r in rewards), default=0.0)
    if largest == 0.0 or discount >= 1.0:
        return float("inf")
    return Q_MARGIN * largest / (1.0 - discount)


def check_finite(
    metrics: dict, step: int, run_dir, phase: str, q_bound: float = float("inf")
) -> None:
    """Stop a run whose training metrics (losses, Q means: means over the last updates) are no
    longer finite, or whose mean Q lies beyond `q_bound` (`q_limit`), before it evaluates,
    logs or checkpoints anything of the diverged agent."""
    bad = sorted(k for k, v in metrics.items() if not np.all(np.isfinite(np.asarray(v))))
    q = float(metrics.get("q_mean", 0.0)) if not bad else 0.0
    if bad or abs(q) > q_bound:
        what = (
            f"{', '.join(bad)} not finite"
            if bad
            else f"mean Q {q:.4g} beyond +-{q_bound:.4g}, {Q_MARGIN:g} times the largest "
            "discounted return the rewards allow"
        )
        raise Diverged(
            f"{run_dir}: training diverged in the {phase} phase before step {step} ({what}). "
            "Nothing of the diverged agent was saved: the checkpoint and records of the last "
            "evaluation are kept. Lower the learning rates (--agent.*-lr) and train in a new "
            "--out"
        )


@jax.jit
def _act(agent, observations: jax.Array, key: jax.Array, decision: jax.Array) -> jax.Array:
    """The agent's deterministic action, with the noise of this `decision` (see above)."""
    return agent.sample_actions(observations, jax.random.fold_in(key, decision), True)


@jax.jit
def _q(agent, observations: jax.Array, actions: jax.Array) -> jax.Array:
    return agent.q_values(observations, actions)


def _pad(x: np.ndarray, multiple: int = 1024) -> np.ndarray:
    """Pad rows to a multiple so Q evaluation compiles for few distinct shapes."""
    pad = (-len(x)) % multiple
    return np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x


class Evaluator:
    """Runs `episodes` deterministic episodes in lock-step; episode i always starts from the
    reset seeded with `seed + i`, so every evaluation sees the same initial states.

    With `holdout` (dataset episodes kept out of training, in the environment's units), each
    evaluation also compares Q(s, a) of the logged actions with their discounted Monte-Carlo
    return: `holdout_q_pred_mean`, `holdout_q_mc_mean`, `holdout_q_bias`.

    `horizon`: actions per chunk of the agents it evaluates (see the module notes).
    `device`: where the agent acts, "default" (where it trains) or "cpu". On a GPU that many
    runs share, a small policy's per-step call waits its turn for milliseconds, so an
    evaluation of 10 episodes of 1,000 steps took seconds; the CPU answers in microseconds.
    Large policies (flows, best-of-N) may act faster on the GPU.
    """

    def __init__(
        self,
        task: Task,
        episodes: int,
        seed: int,
        gamma: float,
        holdout: Dataset | None = None,
        horizon: int = 1,
        device: Literal["default", "cpu"] = "default",
    ):
        self.task, self.seed, self.gamma, self.horizon = task, seed, gamma, horizon
        self.device = jax.local_devices(backend="cpu")[0] if device == "cpu" else None
        self.envs = [task.make_env() for _ in range(episodes)]
        self.holdout = _holdout(task, holdout, gamma, horizon) if holdout is not None else None

    def policy(self, agent) -> Callable[[np.ndarray], np.ndarray]:
        """The agent acting deterministically, for `rollouts`: fresh noise at each decision,
        from a key sequence that starts anew with every call (see the module notes)."""
        key, decisions = jax.random.key(self.seed), itertools.count()

        def act(observations: np.ndarray) -> np.ndarray:
            decision = jnp.int32(next(decisions))
            return np.asarray(_act(agent, jnp.asarray(observations), key, decision))

        return act

    def __call__(self, agent) -> dict[str, float]:
        if self.device is None:
            return self._evaluate(agent)
        with jax.default_device(self.device):
            return self._evaluate(jax.device_put(agent, self.device))

    def _evaluate(self, agent) -> dict[str, float]:
        returns, trajectories, terminated, successes = self.rollouts(
            self.policy(agent), self.horizon
        )
        metrics = {
            "return_mean": float(returns.mean()),
            "return_std": float(returns.std()),
            "normalized_score": float(self.task.score(returns, successes)),
            "episode_length": float(np.mean([len(t["rew"]) for t in trajectories])),
        }
        if self.task.success_metric:
            metrics["success_rate"] = float(successes.mean())
        metrics |= self._q_bias(agent, trajectories, terminated)
        if self.holdout is not None:
            obs, act, q_mc, valid = self.holdout
            q_pred = np.asarray(_q(agent, jnp.asarray(obs), jnp.asarray(act)))[: len(q_mc)]
            stats = self._in_reward_scale(q_bias_stats(q_pred, q_mc, valid))
            metrics |= {f"holdout_{k}": v for k, v in stats.items()}
        return metrics

    def rollouts(
        self, policy, horizon: int = 1
    ) -> tuple[np.ndarray, list[dict], np.ndarray, np.ndarray]:
        """One episode per environment with `policy(observations [n, obs_dim]) -> actions`:
        (returns, per-episode observations/actions/rewards, terminated, success flags). Any
        policy can be scored on the same episodes (benchmarks score peer libraries' this way).

        With `horizon` > 1 the policy returns chunks [n, horizon * A] (step-major); each
        environment executes its chunk open-loop and is given a new one when it is used up, so
        chunks start at steps 0, h, 2h, ... of each episode."""
        n = len(self.envs)
        obs = np.stack([env.reset(seed=self.seed + i)[0] for i, env in enumerate(self.envs)])
        obs = obs.astype(np.float32)
        active = np.ones(n, bool)
        trajectories = [{"obs": [], "act": [], "rew": []} for _ in range(n)]
        terminated, successes = np.zeros(n, bool), np.zeros(n, bool)
        queues: list[list[np.ndarray]] = [[] for _ in range(n)]  # each env's unexecuted steps
        while active.any():
            if any(not queues[i] for i in np.flatnonzero(active)):
                chunks = np.asarray(policy(obs)).reshape(n, horizon, -1)
                for i in np.flatnonzero(active):
                    queues[i] = queues[i] or list(chunks[i])
            for i in np.flatnonzero(active):
                action = queues[i].pop(0)
                next_obs, reward, term, trunc, info = self.envs[i].step(action)
                traj = trajectories[i]
                traj["obs"].append(obs[i].copy())
                traj["act"].append(action)
                traj["rew"].append(float(reward))
                successes[i] |= bool(info.get("success", False))
                obs[i] = next_obs
                if term or trunc:
                    active[i], terminated[i] = False, bool(term)
        returns = np.array([sum(t["rew"]) for t in trajectories])
        return returns, trajectories, terminated, successes

    def _q_bias(self, agent, trajectories: list[dict], terminated: np.ndarray) -> dict:
        lengths = [len(t["rew"]) for t in trajectories]
        obs = np.concatenate([np.asarray(t["obs"], np.float32) for t in trajectories])
        act = np.concatenate([np.asarray(t["act"], np.float32) for t in trajectories])
        rew = np.concatenate([np.asarray(t["rew"], np.float32) for t in trajectories])
        ends = np.zeros(len(rew), bool)
        ends[np.cumsum(lengths) - 1] = True
        # Q is learned from transformed rewards: compare it with returns in the same units.
        q_mc = discounted_returns(self.task.reward_transform(rew), ends, self.gamma)
        valid = valid_for_bias(lengths, list(terminated), self.gamma)
        if self.horizon > 1:  # each chunk as executed, at its start
            act, whole, index = _chunk_windows(act, ends, self.horizon)
            valid &= whole & (index % self.horizon == 0)
        q_pred = np.asarray(_q(agent, jnp.asarray(_pad(obs)), jnp.asarray(_pad(act))))[: len(rew)]
        return self._in_reward_scale(q_bias_stats(q_pred, q_mc, valid))

    def _in_reward_scale(self, stats: dict[str, float]) -> dict[str, float]:
        """Q and the returns are compared in the units the agent learned in; report them in
        the environment's reward scale (IQL's 1000 / return range undone), so agents compare.
        A reward shift (sparse tasks' r - 1) stays in both, and cancels in the bias."""
        return {k: v / self.task.reward_transform.scale for k, v in stats.items()}


def _chunk_windows(
    actions: np.ndarray, ends: np.ndarray, horizon: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per step t of consecutive episodes (`ends` marks their last steps, the final one
    included): the actions of steps t..t+h-1 flattened step-major, whether those steps all lie
    in t's episode, and t's index in its episode."""
    t = np.arange(len(actions))
    last = np.flatnonzero(ends)
    episode = np.searchsorted(last, t)  # the first end at or after t
    first = np.concatenate([[0], last[:-1] + 1])[episode]
    rows = np.minimum(t[:, None] + np.arange(horizon), len(actions) - 1)
    return actions[rows].reshape(len(t), -1), last[episode] - t + 1 >= horizon, t - first


def _holdout(task: Task, holdout: Dataset, gamma: float, horizon: int) -> tuple[np.ndarray, ...]:
    """Held-out episodes as the agent sees them (normalised observations, padded for Q) with
    the discounted return of their transformed rewards and the steps where it is complete;
    for a chunked agent, the logged actions of the h steps from each step, where the episode
    holds h more."""
    obs = holdout.observations
    if task.observation_normalizer is not None:
        obs = task.observation_normalizer(obs)
    q_mc = discounted_returns(task.reward_transform(holdout.rewards), holdout.episode_ends, gamma)
    ends = np.flatnonzero(holdout.episode_ends)
    lengths = np.diff(np.concatenate([[-1], ends])).tolist()
    valid = valid_for_bias(lengths, holdout.terminals[ends].tolist(), gamma)
    actions = holdout.actions
    if horizon > 1:
        actions, whole, _ = _chunk_windows(actions, holdout.episode_ends, horizon)
        valid &= whole
    return _pad(obs), _pad(actions), q_mc, valid
