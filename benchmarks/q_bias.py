"""Q-value bias over offline training: naive SAC runs away above the Monte-Carlo truth, CQL
sits below it, IQL stays near it. Writes benchmarks/results/q_bias_DATASET.{json,md,png}.

    python benchmarks/q_bias.py --task hopper-medium --size 100000 --steps 30000

Each agent trains offline with its reference recipe (`o2o train --offline-steps N
--online-steps 0`) and is evaluated every `--eval-interval` updates; `q_bias` there is the
agent's mean Q(s, a) minus the discounted return that followed, on its own evaluation
rollouts, and `holdout_q_bias` the same on dataset episodes kept out of training (the logged
actions), both in the environment's reward scale (the evaluator undoes IQL's reward
scaling). Re-running with the same arguments reuses the runs in runs/q_bias/.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib.pyplot as plt

from o2o.report.tables import markdown_table
from o2o.train.pipeline import default_config, train

RESULTS = Path(__file__).parent / "results"


def run(algo: str, args: argparse.Namespace) -> list[dict]:
    """The evaluation records of one offline run (trained first if missing), with Q in the
    environment's reward units (IQL learns from rescaled rewards)."""
    config = default_config(
        algo,
        task=args.task,
        dataset_size=args.size,
        offline_steps=args.steps,
        online_steps=0,
        seed=args.seed,
        eval_interval=args.eval_interval,
        eval_episodes=args.eval_episodes,
        out=Path("runs") / "q_bias" / f"{args.task}-{algo}-{args.steps}-seed{args.seed}",
    )
    run_dir = train(config)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    records = [r for r in map(json.loads, lines) if "q_bias" in r]
    return records


BIAS_KEYS = tuple(p + k for p in ("", "holdout_") for k in ("q_pred_mean", "q_mc_mean", "q_bias"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="hopper-medium")
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--steps", type=int, default=30_000)
    parser.add_argument("--eval-interval", type=int, default=2_500)
    parser.add_argument("--eval-episodes", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--algos", nargs="+", default=["naive", "cql", "iql"])
    args = parser.parse_args()

    curves = {algo: run(algo, args) for algo in args.algos}
    command = (
        f"python benchmarks/q_bias.py --task {args.task} --size {args.size} --steps "
        f"{args.steps} --eval-interval {args.eval_interval} --eval-episodes "
        f"{args.eval_episodes} --seed {args.seed} --algos {' '.join(args.algos)}"
    )
    stem = RESULTS / f"q_bias_{args.task}"
    stem.with_suffix(".json").write_text(json.dumps({"command": command, "runs": curves}, indent=1))

    fig, (ax_bias, ax_held, ax_score) = plt.subplots(1, 3, figsize=(14, 3.8))
    for algo, records in curves.items():
        steps = [r["step"] for r in records]
        ax_bias.plot(steps, [r["q_bias"] for r in records], marker="o", ms=3, label=algo)
        held = [r.get("holdout_q_bias", float("nan")) for r in records]
        ax_held.plot(steps, held, marker="o", ms=3)
        ax_score.plot(steps, [r["normalized_score"] for r in records], marker="o", ms=3)
    for ax, where in ((ax_bias, "evaluation rollouts"), (ax_held, "held-out dataset episodes")):
        ax.axhline(0.0, color="black", lw=0.8)
        ax.set(xlabel="offline updates", ylabel="Q(s,a) - MC return", title=f"Q bias: {where}")
    ax_score.set(xlabel="offline updates", ylabel="normalised score", title=args.task)
    ax_bias.legend()
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=110)

    rows = [
        {"algo": algo, "step": r["step"], **{k: r.get(k) for k in BIAS_KEYS}}
        | {"score": r["normalized_score"]}
        for algo, records in curves.items()
        for r in records
    ]
    columns = {
        "algo": "algo",
        "step": "updates",
        "q_pred_mean": "Q predicted",
        "q_mc_mean": "MC return",
        "q_bias": "bias",
        "holdout_q_pred_mean": "held-out Q",
        "holdout_q_mc_mean": "held-out MC",
        "holdout_q_bias": "held-out bias",
        "score": "normalised score",
    }
    title = f"# Q bias on {args.task} ({args.size} transitions), seed {args.seed}"
    header = f"{title}\n\n`{command}`\n\n"
    stem.with_suffix(".md").write_text(header + markdown_table(rows, columns))
    print(f"wrote {stem}.{{json,md,png}}")


if __name__ == "__main__":
    main()
