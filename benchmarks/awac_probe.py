"""Why o2o's AWAC trails d3rlpy's on hopper-medium, measured two ways. Writes
benchmarks/results/awac_probe.{json,md}; the experiment log is results/awac_parity.md.

    python benchmarks/awac_probe.py --runs runs/bench_offline/hopper-medium-awac-50000-seed* \\
        runs/bench_offline/hopper-medium-awac-critic_entropy_weight=1.0-50000-seed*

1. At the start states: for each finished o2o AWAC run (its latest checkpoint), at five reset
   states of the environment (seeds 10,000-10,004), Q(s0, a) of the dataset's actions at the
   50 nearest dataset states (every episode starts there, so these are the logged first
   actions), Q(s0, pi(s0)) of the deterministic action, the data actions' advantage, and the
   largest per-dimension gap between pi(s0) and their mean. An AWR actor is pulled towards a
   logged action only where its advantage is positive: once Q(s0, pi) exceeds Q(s0, data) the
   weight of the data there is exp(A / lambda) ~ 0 and nothing pulls the policy back.
2. d3rlpy's critic target (benchmarks/peer_d3rlpy_awac_target.py, in the peer venv): the
   entropy term t log pi(a'|s') its AWAC inherits from SAC (t = 1), beside the reward, over
   its first updates, for `awac` and `awac-no-entropy`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from o2o.logging import read_metrics
from o2o.report import stats
from o2o.report.tables import markdown_table
from o2o.train.pipeline import load_config, run_dataset, run_split, run_task, trained_agent

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
PEER_PYTHON = ROOT.parent / ".venv-bench" / "bin" / "python"
PEER_DATA = ROOT.parent / "runs" / "bench_offline" / "peer_data"
RESET_SEEDS = range(10_000, 10_005)
NEIGHBOURS = 50


def start_states(run: Path) -> dict:
    """Section 1 for one run, in the environment's reward units (AWAC learns them unscaled)."""
    config = load_config(run)
    agent, _, progress = trained_agent(run, "offline")
    task = run_task(run)
    train, _ = run_split(config, run_dataset(config))
    env = task.base_env()
    starts = np.stack([env.reset(seed=s)[0] for s in RESET_SEEDS])
    env.close()
    scale = train.observations.std(0)
    normalize = task.observation_normalizer or (lambda x: x)
    rows = []
    for s0 in starts:
        near = np.argsort((((train.observations - s0) / scale) ** 2).sum(1))[:NEIGHBOURS]
        obs = jnp.asarray(normalize(s0[None]), jnp.float32)
        q_data = np.asarray(
            agent.q_values(jnp.repeat(obs, NEIGHBOURS, 0), jnp.asarray(train.actions[near]))
        ).mean()
        pi = agent.sample_actions(obs, jax.random.key(0), deterministic=True)
        q_pi = float(np.asarray(agent.q_values(obs, pi))[0])
        gap = np.abs(np.asarray(pi)[0] - train.actions[near].mean(0)).max()
        rows.append((q_data, q_pi, gap))
    q_data, q_pi, gap = np.mean(rows, 0)
    scores = [r["normalized_score"] for r in read_metrics(run) if r.get("phase") == "offline"]
    return {
        "run": run.name,
        "updates": progress["updates"],
        "score": stats.run_score(scores),
        "q_data": float(q_data),
        "q_pi": float(q_pi),
        "advantage": float(q_data - q_pi),
        "gap": float(gap),
    }


def d3rlpy_target(algo: str, data: Path, steps: int, every: int) -> list[dict]:
    """Section 2: the peer script's lines for `algo`."""
    out = subprocess.run(
        [
            str(PEER_PYTHON),
            str(ROOT / "peer_d3rlpy_awac_target.py"),
            f"--algo={algo}",
            f"--data={data}",
            f"--steps={steps}",
            f"--every={every}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", type=Path, required=True)
    parser.add_argument(
        "--data", type=Path, default=PEER_DATA / "hopper-medium-100000-holdout10.npz"
    )
    parser.add_argument("--d3rlpy-steps", type=int, default=2000)
    parser.add_argument("--every", type=int, default=500)
    args = parser.parse_args()

    starts = [start_states(run) for run in args.runs]
    targets = [
        line
        for algo in ("awac", "awac-no-entropy")
        for line in d3rlpy_target(algo, args.data, args.d3rlpy_steps, args.every)
    ]
    command = (
        f"python benchmarks/awac_probe.py --runs {' '.join(map(str, args.runs))} "
        f"--d3rlpy-steps {args.d3rlpy_steps} --every {args.every}"
    )
    (RESULTS / "awac_probe.json").write_text(
        json.dumps({"command": command, "start_states": starts, "d3rlpy_target": targets}, indent=1)
    )
    fmt = lambda x: f"{x:.1f}"  # noqa: E731
    start_rows = [
        {k: fmt(v) if isinstance(v, float) else v for k, v in row.items()}
        | {"gap": f"{row['gap']:.2f}"}
        for row in starts
    ]
    target_rows = [
        {k: fmt(v) if isinstance(v, float) else v for k, v in row.items()} for row in targets
    ]
    text = (
        "# AWAC on hopper-medium: the start states, and d3rlpy's entropy term\n\n"
        f"`{command}`\n\n{__doc__.split(chr(10) + chr(10), 2)[2]}\n"
        "## 1. At the start states (o2o runs, latest checkpoint)\n\n"
        "Score: the run's mean of its last 3 evaluations. Q in the environment's reward units; "
        "gap: the largest per-dimension |pi(s0) - mean logged action|.\n\n"
        + markdown_table(
            start_rows,
            {
                "run": "run",
                "updates": "updates",
                "score": "score",
                "q_data": "Q(s0, data)",
                "q_pi": "Q(s0, pi)",
                "advantage": "data's advantage",
                "gap": "gap",
            },
        )
        + "\n\n## 2. d3rlpy's critic target (means over a batch of 1,024)\n\n"
        + markdown_table(
            target_rows,
            {
                "algo": "d3rlpy algo",
                "step": "updates",
                "target": "target",
                "min_q_next": "min Q'(s', a')",
                "entropy_term": "t log π(a′ ∣ s′)",
                "reward": "reward",
            },
        )
        + "\n"
    )
    (RESULTS / "awac_probe.md").write_text(text)
    print(f"wrote {RESULTS / 'awac_probe'}.{{json,md}}")


if __name__ == "__main__":
    main()
