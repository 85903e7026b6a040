"""IQL's early fall on hopper-medium, by experiment: a fresh actor trained by IQL's own AWR loss
against the frozen critic and value of finished IQL runs, one run per point of the critic's
training. Writes benchmarks/results/iql_early.{json,md}.

    python benchmarks/iql_early.py --runs runs/bench_offline/hopper-medium-iql-10000-seed0 \\
        runs/bench_offline/hopper-medium-iql-50000-seed0 --seeds 0 1 2 --steps 10000

IQL's policy falls over for its first 20-30k updates on hopper-medium (o2o and d3rlpy alike)
while IQL with beta = 0 (the same actor, loss and data, weights 1) stands at once. Holding the
critic fixed separates the two candidate causes: if the fall comes from the actor's side
(initialisation, log-std, learning rate, update order) a fresh actor falls against any
critic; if it comes from the advantages of a critic that is still climbing from its
initialisation, a fresh actor stands against a converged critic and falls against an early
one. Each critic is also described on the training transitions: the correlation of its
advantage min Q'(s, a) - V(s) with the immediate reward r and with the data's discounted
return-to-go and with the last (most trained) critic's advantage, and the AWR weights'
effective sample size at beta = 3.

The actor's seeds are fresh (`100 + seed`); evaluation is o2o's (10 deterministic episodes
from the runs' reset seeds); batches are drawn from the run's own training transitions
(held-out episodes excluded, rewards and observations in the run's learning units).
"""

from __future__ import annotations

import os

os.environ.setdefault(
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from o2o.agents.base import get_agent, gradient_step
from o2o.checkpoint import load_checkpoint
from o2o.data.buffer import ReplayBuffer
from o2o.data.dataset import discounted_returns
from o2o.data.generate import make_dataset
from o2o.report import stats
from o2o.report.tables import markdown_table
from o2o.train.evaluate import Evaluator
from o2o.train.pipeline import dataset_buffers, hold_out_episodes, load_config, run_task

RESULTS = Path(__file__).parent / "results"


def load_run(run_dir: Path):
    """(config, the run's learning task, its trained agent, its training transitions)."""
    config = load_config(run_dir)
    task = run_task(run_dir)
    env = task.make_env()
    template = get_agent(config.algo).agent_cls.create(
        config.agent, env.observation_space, env.action_space, config.seed
    )
    env.close()
    (agent, _), progress = load_checkpoint(
        run_dir / "checkpoints" / "offline", (template, jax.random.key(0))
    )
    dataset, _ = make_dataset(config.task, config.dataset_size)
    dataset, _ = hold_out_episodes(dataset, config.holdout_episodes)
    needs = {"offline": agent.needs("offline")}
    buffer = dataset_buffers(dataset, task, config.agent.discount, needs)["offline"]
    returns = discounted_returns(
        task.reward_transform(dataset.rewards), dataset.episode_ends, config.agent.discount
    )
    return config, task, agent, buffer, returns, progress["updates"]


def advantages(agent, buffer: ReplayBuffer) -> np.ndarray:
    """min_i Q'_i(s, a) - V(s) on every transition of `buffer`, as IQL's actor weighs them."""
    data, n = buffer.data, int(buffer.size)
    adv = []
    for start in range(0, n, 4096):
        obs = data["observations"][start : start + 4096]
        q = agent._target_q(obs, data["actions"][start : start + 4096])
        adv.append(np.asarray(q - agent.value.apply_fn(agent.value.params, obs)))
    return np.concatenate(adv)


def describe_critic(
    agent, adv: np.ndarray, rewards: np.ndarray, returns: np.ndarray, last: np.ndarray
) -> dict[str, float]:
    """The critic's advantages against r, the return-to-go and the last critic's advantages."""
    weights = np.minimum(np.exp(agent.config.temperature * adv), agent.config.max_weight)
    return {
        "adv_std": float(adv.std()),
        "corr_adv_reward": float(np.corrcoef(adv, rewards)[0, 1]),
        "corr_adv_return": float(np.corrcoef(adv, returns)[0, 1]),
        "corr_adv_last": float(np.corrcoef(adv, last)[0, 1]),
        "weight_ess": float(weights.sum() ** 2 / (len(adv) * np.sum(weights**2))),
    }


@functools.partial(jax.jit, static_argnames=("num_updates", "batch_size"))
def _actor_updates(agent, key, buffer: ReplayBuffer, *, num_updates: int, batch_size: int):
    """`num_updates` AWR steps of the actor alone; critic, value and targets stay as loaded."""

    def body(carry, _):
        agent, key = carry
        key, key_batch = jax.random.split(key)
        batch = buffer.sample(key_batch, batch_size)
        actor, info = gradient_step(agent.actor, agent.actor_loss, batch)
        return (agent.replace(actor=actor), key), info

    (agent, key), info = jax.lax.scan(body, (agent, key), None, length=num_updates)
    return agent, key, jax.tree.map(jnp.mean, info)


def fresh_actor_curve(
    config, task, agent, buffer: ReplayBuffer, seed: int, args: argparse.Namespace
) -> list[dict]:
    """Scores of a fresh actor trained against `agent`'s frozen critic and value."""
    env = task.make_env()
    fresh = type(agent).create(config.agent, env.observation_space, env.action_space, 100 + seed)
    env.close()
    agent = agent.replace(actor=fresh.actor)
    evaluator = Evaluator(task, args.eval_episodes, seed=10_000 + config.seed, gamma=0.99)
    key = jax.random.key(seed)
    curve, info = [], {}
    for step in range(0, args.steps + 1, args.eval_interval):
        if step:
            agent, key, info = _actor_updates(
                agent,
                key,
                buffer,
                num_updates=args.eval_interval,
                batch_size=config.agent.batch_size,
            )
        returns, _, _, successes = evaluator.rollouts(evaluator.policy(agent))
        curve.append(
            {"step": step, "score": task.score(returns, successes)}
            | {k: float(info[k]) for k in ("weight_ess", "policy_std") if k in info}
        )
        print(f"  actor seed {seed} step {step}: {curve[-1]['score']:.1f}", flush=True)
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runs",
        nargs="+",
        type=Path,
        required=True,
        help="finished IQL runs of one dataset, the most trained last (the reference of the "
        "advantages' correlation)",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="actor seeds")
    parser.add_argument("--steps", type=int, default=10_000, help="actor updates")
    parser.add_argument("--eval-interval", type=int, default=1000)
    parser.add_argument("--eval-episodes", type=int, default=10)
    args = parser.parse_args()

    runs = [load_run(run_dir) for run_dir in args.runs]
    advs = [advantages(run[2], run[3]) for run in runs]
    if len({len(adv) for adv in advs}) > 1:
        parser.error("the runs were trained on different transitions; give runs of one dataset")
    rows, results = [], {}
    for run_dir, run, adv in zip(args.runs, runs, advs, strict=True):
        start = time.perf_counter()
        config, task, agent, buffer, returns, updates = run
        rewards = np.asarray(buffer.data["rewards"][: len(adv)])
        critic = describe_critic(agent, adv, rewards, returns[: len(adv)], advs[-1])
        print(f"{run_dir} ({updates} updates): {critic}", flush=True)
        curves = [fresh_actor_curve(config, task, agent, buffer, s, args) for s in args.seeds]
        scores = [stats.run_score([p["score"] for p in c]) for c in curves]
        results[str(run_dir)] = {"critic_updates": updates, **critic, "curves": curves}
        rows.append(
            {
                "run": f"`{run_dir.name}`",
                "updates": updates,
                **{k: f"{v:.2f}" for k, v in critic.items()},
                "curve": " / ".join(
                    stats.aggregate([c[i]["score"] for c in curves]) for i in range(len(curves[0]))
                ),
                "score": stats.aggregate(scores),
                "minutes": (time.perf_counter() - start) / 60,
            }
        )
    command = "python benchmarks/iql_early.py " + " ".join(sys.argv[1:])
    (RESULTS / "iql_early.json").write_text(
        json.dumps({"command": command, "runs": results}, indent=1)
    )
    columns = {
        "run": "critic and value from",
        "updates": "their updates",
        "corr_adv_reward": "corr(A, r)",
        "corr_adv_return": "corr(A, return-to-go)",
        "corr_adv_last": "corr(A, last critic's A)",
        "adv_std": "std A",
        "weight_ess": "AWR weights' ESS",
        "curve": f"fresh actor's score every {args.eval_interval} updates",
        "score": "run score",
        "minutes": "minutes",
    }
    (RESULTS / "iql_early.md").write_text(
        f"# A fresh IQL actor against frozen critics: {args.steps} actor updates, actor seeds "
        f"{' '.join(map(str, args.seeds))}, {args.eval_episodes} evaluation episodes\n\n"
        f"`{command}`\n\n{stats.note(run_scores=True)} Per evaluation the curve shows the "
        "same statistic over actor seeds. A: min Q'(s, a) - V(s) on every training "
        "transition, in the run's learning units; ESS: (sum w)^2 / (n sum w^2) of "
        "w = min(exp(3 A), 100).\n\n" + markdown_table(rows, columns)
    )
    print(f"wrote {RESULTS / 'iql_early'}.{{json,md}}")


if __name__ == "__main__":
    main()
