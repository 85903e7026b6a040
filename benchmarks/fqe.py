"""Fitted Q evaluation against the measured returns of the same policies (issue 23).

    python benchmarks/fqe.py --runs runs/bench_offline/hopper-medium-*-seed* --episodes 20

For each finished run: the policy's measured discounted return (the FQE target: from the
environment's resets, which are the dataset's start states, `--episodes` deterministic
episodes) and its D4RL-normalised score, then `o2o.diagnostics.fqe` on the run's own dataset
with the defaults of `o2o fqe`. Results are cached per run in benchmarks/results/fqe.json
(a rerun skips what is done, and re-renders the table from it where the run directories are
gone). The table gives each estimate's error and, over the runs, the rank correlation of the
estimates with the measured values and scores (with 95% bootstrap intervals over the
checkpoints), and the regret of picking the checkpoint FQE ranks first.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import scipy.stats

from o2o.diagnostics.fqe import FQEConfig, agent_policy, fitted_q_evaluation
from o2o.diagnostics.switch import DISTANCE, action_distance
from o2o.report.tables import markdown_table
from o2o.train.evaluate import Evaluator
from o2o.train.pipeline import load_config, run_dataset, run_split, run_task, trained_agent

RESULTS = Path(__file__).resolve().parent / "results"
EVAL_SEED = 50_000  # resets unlike the training evaluations'


def spearman(a: list[float], b: list[float]) -> dict[str, float]:
    """Spearman's rank correlation with its 95% percentile-bootstrap interval over the pairs
    (2,000 resamples; few pairs make it wide). A resample with one distinct value on a side has
    no rank correlation and is left out."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    picks = np.random.default_rng(0).integers(0, len(a), (2000, len(a)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.stats.ConstantInputWarning)
        draws = np.array([scipy.stats.spearmanr(a[i], b[i]).statistic for i in picks])
    low, high = np.percentile(draws[np.isfinite(draws)], [2.5, 97.5])
    value = scipy.stats.spearmanr(a, b).statistic
    return {"value": float(value), "low": float(low), "high": float(high)}


def distance(run: Path) -> float:
    """`o2o switch-check`'s action distance of the run's policy from its data (held-out states
    of the run's own split)."""
    config = load_config(run)
    agent, _, _ = trained_agent(run)
    dataset = run_dataset(config)
    train, held = run_split(config, dataset)
    policy = agent_policy(agent, run_task(run).observation_normalizer)
    return action_distance(policy, train, held)


def measure(run: Path, episodes: int) -> dict:
    config = load_config(run)
    agent, phase, progress = trained_agent(run)
    task = run_task(run)
    evaluator = Evaluator(task, episodes, EVAL_SEED, config.agent.discount)
    start = time.perf_counter()
    returns, trajectories, _, successes = evaluator.rollouts(evaluator.policy(agent))
    gamma = config.agent.discount
    discounted = [float(np.polyval(t["rew"][::-1], gamma)) for t in trajectories]
    fqe_config = FQEConfig(discount=gamma)
    policy = agent_policy(agent, task.observation_normalizer)
    inside = task.terminals_inside_recordings
    fqe = fitted_q_evaluation(policy, run_dataset(config), fqe_config, 0, inside)
    return {
        "run": str(run),
        "algo": config.algo,
        "phase": phase,
        "updates": progress.get("updates"),
        "score": float(task.score(returns, successes)),
        "return": float(np.mean(returns)),
        "discounted_return": float(np.mean(discounted)),
        "discounted_return_std": float(np.std(discounted)),
        "fqe": fqe["value"],
        "behaviour_value": fqe["behaviour_value"],
        "fqe_step": fqe["step"],
        "fqe_steps_run": fqe["steps_run"],
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", type=Path, required=True)
    parser.add_argument("--episodes", type=int, default=20)
    args = parser.parse_args()
    path = RESULTS / "fqe.json"
    cache = json.loads(path.read_text())["rows"] if path.exists() else []
    done = {row["run"]: row for row in cache}
    rows = []
    for run in sorted(args.runs):
        if str(run) not in done and not (run / "summary.json").exists():
            print(f"{run}: unfinished, skipped", flush=True)
            continue
        row = done.get(str(run)) or measure(run, args.episodes)
        if "action_distance" not in row:
            row["action_distance"] = distance(run)
        rows.append(row)
        print(json.dumps(row), flush=True)
        write(rows, args)


def write(rows: list[dict], args: argparse.Namespace) -> None:
    fqe = [r["fqe"] for r in rows]
    truth = [r["discounted_return"] for r in rows]
    scores = [r["score"] for r in rows]
    error = np.subtract(fqe, truth)
    # The policies that stay up: at least half the data's own discounted return, measured.
    upright = [r for r in rows if r["discounted_return"] >= 0.5 * r["behaviour_value"]]
    upright_error = np.array([r["fqe"] - r["discounted_return"] for r in upright])
    summary = {
        "runs": len(rows),
        "upright_runs": len(upright),
        "upright_mean_abs_error": float(np.abs(upright_error).mean()) if len(upright) else None,
        "spearman_fqe_vs_discounted_return": spearman(fqe, truth) if len(rows) > 2 else None,
        "spearman_fqe_vs_score": spearman(fqe, scores) if len(rows) > 2 else None,
        "mean_abs_error": float(np.abs(error).mean()),
        "mean_error": float(error.mean()),
        "regret_at_1": float(max(scores) - scores[int(np.argmax(fqe))]),
    }
    command = f"python benchmarks/fqe.py --episodes {args.episodes} --runs " + " ".join(
        sorted(r["run"] for r in rows)
    )
    stem = RESULTS / "fqe"
    payload = {"command": command, "fqe_config": FQEConfig().__dict__, "summary": summary}
    stem.with_suffix(".json").write_text(json.dumps(payload | {"rows": rows}, indent=1))
    table = [
        {
            "run": Path(r["run"]).name,
            "score": f"{r['score']:.1f}",
            "truth": f"{r['discounted_return']:.1f} ± {r['discounted_return_std']:.1f}",
            "fqe": f"{r['fqe']:.1f}",
            "error": f"{r['fqe'] - r['discounted_return']:+.1f}",
            "behaviour": f"{r['behaviour_value']:.1f}",
            "distance": f"{r['action_distance']:.1f}",
            "step": r["fqe_step"],
        }
        for r in sorted(rows, key=lambda r: r["discounted_return"])
    ]
    columns = {
        "run": "run (checkpoint)",
        "score": "measured score",
        "truth": "measured discounted return (mean ± std)",
        "fqe": "FQE estimate",
        "error": "FQE − measured",
        "behaviour": "data's own (discounted MC)",
        "distance": "action distance",
        "step": "FQE update kept",
    }
    lines = [
        "# Fitted Q evaluation against measured returns (hopper-medium, 100k transitions)",
        "",
        f"`{command}`",
        "",
        f"Each run's final checkpoint, measured over {args.episodes} deterministic episodes "
        f"from resets {EVAL_SEED}+ (the discounted return is FQE's target, discount 0.99), and "
        "estimated by `o2o fqe`'s defaults on the run's own dataset (256x256 critic, Adam 3e-4, "
        "batch 256, tau 0.005; kept when the estimate moved by at most 1% over 10k updates, "
        "after at least 20k, unless the held-out TD error signals overfitting; at most 100k). "
        f"Wall time {sum(r['seconds'] for r in rows) / 3600:.2f} hours on the 2-core host "
        "(XLA's default threads), evaluation episodes included.",
        "",
        f"Over {summary['runs']} checkpoints: rank correlation (Spearman, 95% bootstrap "
        "interval over the checkpoints) of FQE with the measured "
        f"discounted return {fmt_correlation(summary['spearman_fqe_vs_discounted_return'])}, "
        "with the "
        f"measured score {fmt_correlation(summary['spearman_fqe_vs_score'])}; mean error "
        f"{summary['mean_error']:+.1f}, mean absolute error {summary['mean_abs_error']:.1f}; "
        f"picking the checkpoint FQE ranks first loses {summary['regret_at_1']:.1f} points of "
        "score against the best (regret@1).",
        "",
        f"The {summary['upright_runs']} checkpoints that earn at least half the data's own "
        "discounted return have a mean absolute error of "
        + (
            f"{summary['upright_mean_abs_error']:.1f}."
            if summary["upright_mean_abs_error"] is not None
            else "n/a."
        )
        + " FQE bootstraps only through the dataset's next states, which the logged behaviour "
        "reached; a policy whose small, consistent deviations from the data compound into a "
        "fall (IQL's early policies, about 43 steps long) reaches states the data does not "
        "hold, and nothing corrects the estimate, although its actions at the data's states lie "
        f"as close to the data's as the logged ones (the action distance of `o2o switch-check`: "
        f"1 is the logged actions' own, {DISTANCE:g} its threshold). With discount 0.99 the "
        "discounted return weighs the first hundred or so steps of an episode, which walking "
        "policies of very "
        "different scores share, so it ranks them little.",
        "",
        markdown_table(table, columns),
        "",
    ]
    stem.with_suffix(".md").write_text("\n".join(lines))


def fmt_correlation(value: dict | None) -> str:
    """A correlation with its interval."""
    return (
        "n/a"
        if value is None
        else f"{value['value']:.2f} [{value['low']:.2f}, {value['high']:.2f}]"
    )


if __name__ == "__main__":
    main()
