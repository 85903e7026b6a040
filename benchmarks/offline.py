"""Offline benchmark: normalised scores of o2o's offline agents on generated locomotion datasets
at a fixed update budget, with d3rlpy's BC, TD3+BC, CQL, IQL and AWAC on the identical data,
budget and seeds, side by side in the same run. Writes benchmarks/results/offline_NAME.{json,md}.

    python benchmarks/offline.py --name peer-10k --datasets hopper-medium \\
        walker2d-medium-replay --algos bc-det td3bc cql iql awac --seeds 0 1 2 --steps 10000 --peer

Each o2o run is `o2o train --algo A --task D --offline-steps STEPS --online-steps 0 --seed S`
with the agent's reference recipe; the score is its final evaluation (10 deterministic
episodes from fixed reset seeds). With `--peer`, d3rlpy trains in the peer venv
(`make bench-venv`) on the same training episodes (o2o's held-out episodes are withheld from
both), in a subprocess running alongside the o2o run, and is then scored by o2o's evaluator on
the same environments and reset seeds (benchmarks/peer_d3rlpy_offline.py). Each library gets one
CPU core (XLA and torch single-threaded), so updates per second compare like with like:
o2o's is the rate over its last evaluation interval (compiled, evaluation excluded), d3rlpy's
over its whole update loop.

`--set ALGO.FIELD=VALUE` changes one field of an agent's recipe, and the run directories and
the table's rows name the change (e.g. `--set qc.hidden_dims=256,256`: at its reference 4x512
networks QC does about 0.4 updates/s on one core, 2 hours per 3,000 updates).

Resumable: finished o2o runs (runs/bench_offline/; reused only if their saved configuration is
the one asked for) and peer results are reused, so re-running
the same command after an interruption continues where it stopped.
"""

from __future__ import annotations

import os

# One core per library: set before JAX starts its CPU client.
os.environ.setdefault(
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)

import argparse
import ast
import dataclasses
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from o2o.agents import get_agent
from o2o.data.formats import save_native
from o2o.data.generate import make_dataset
from o2o.envs.tasks import parse_task
from o2o.logging import read_metrics
from o2o.report.tables import markdown_table, mean_std
from o2o.train.evaluate import Evaluator
from o2o.train.pipeline import check_resumable, default_config, hold_out_episodes, train

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
RUNS = Path("runs") / "bench_offline"
PEER_PYTHON = ROOT.parent / ".venv-bench" / "bin" / "python"
PEERS = {"bc-det": "bc", "td3bc": "td3+bc", "cql": "cql", "iql": "iql", "awac": "awac"}


def parse_overrides(items: list[str], algos: list[str]) -> dict[str, dict[str, Any]]:
    """`--set ALGO.FIELD=VALUE` items as {algo: {field: value}}; a comma makes a tuple. Each
    ALGO must be one of `algos`, the benchmark's agents."""
    overrides: dict[str, dict[str, Any]] = {}
    for item in items:
        target, _, text = item.partition("=")
        algo, _, field = target.partition(".")
        if not text or not field:
            raise SystemExit(f"--set {item!r}: expected ALGO.FIELD=VALUE, e.g. qc.num_samples=8")
        if algo not in algos:
            raise SystemExit(f"--set {item!r}: {algo} is not in --algos ({' '.join(algos)})")
        if field not in {f.name for f in dataclasses.fields(get_agent(algo).default_config)}:
            raise SystemExit(f"--set {item!r}: {algo}'s config has no field {field!r}")
        try:
            values = tuple(ast.literal_eval(v) for v in text.split(",") if v)
        except (ValueError, SyntaxError):
            raise SystemExit(
                f"--set {item!r}: VALUE must be Python literals (numbers, True/False, None, "
                "quoted strings), comma-separated for a tuple"
            ) from None
        overrides.setdefault(algo, {})[field] = values if "," in text else values[0]
    return overrides


def _shown(algo: str, args: argparse.Namespace) -> list[str]:
    fields = args.overrides.get(algo, {})
    return [
        f"{k}={'x'.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in fields.items()
    ]


def label(algo: str, args: argparse.Namespace) -> str:
    """`algo`, with its `--set` overrides when it has any: e.g. 'qc (hidden_dims=256x256)'."""
    shown = _shown(algo, args)
    return f"{algo} ({', '.join(shown)})" if shown else algo


def o2o_result(dataset: str, algo: str, seed: int, args: argparse.Namespace) -> dict:
    """Train (or reuse) one o2o run; its final score and training speed."""
    tag = "-".join([algo, *_shown(algo, args)])
    out = RUNS / f"{dataset}-{tag}-{args.steps}-seed{seed}"
    config = default_config(
        algo,
        task=dataset,
        dataset_size=args.size,
        offline_steps=args.steps,
        online_steps=0,
        seed=seed,
        eval_interval=args.eval_interval or args.steps // 2,
        eval_episodes=args.eval_episodes,
        holdout_episodes=args.holdout_episodes,
        out=out,
    )
    config = dataclasses.replace(
        config, agent=dataclasses.replace(config.agent, **args.overrides.get(algo, {}))
    )
    if (out / "summary.json").exists():
        check_resumable(out, config)  # a finished run is reused only under the same settings
    else:
        train(config)
    summary = json.loads((out / "summary.json").read_text())
    last = read_metrics(out)[-1]  # the last interval: compiled, no evaluation inside
    return {
        "score": summary["offline_final_score"],
        "return": summary["offline_final_return"],
        "updates_per_s": last["updates_per_s"],
        "holdout_q_bias": last.get("holdout_q_bias"),
        "q_bias": last.get("q_bias"),
        "run_dir": str(out),
    }


def peer_data(dataset: str, args: argparse.Namespace) -> Path:
    """The training episodes o2o uses (held-out ones withheld), in env units, for d3rlpy.
    Episode ends that are not terminals (time limits, broken trajectories) become timeouts, so
    d3rlpy splits episodes where o2o does."""
    path = RUNS / "peer_data" / f"{dataset}-{args.size}-holdout{args.holdout_episodes}.npz"
    if not path.exists():
        data, _ = make_dataset(dataset, args.size)
        data, _ = hold_out_episodes(data, args.holdout_episodes)
        ends = data.timeouts | (data.episode_ends & ~data.terminals)
        save_native(dataclasses.replace(data, timeouts=ends), path)
    return path


def start_peer(dataset: str, algo: str, seed: int, args: argparse.Namespace):
    """Launch d3rlpy training for one (dataset, algo, seed) unless its result exists."""
    path = RUNS / "peer" / f"{dataset}-{PEERS[algo]}-{args.steps}-seed{seed}.json"
    if path.exists():
        return path, None
    if not PEER_PYTHON.exists():
        raise SystemExit(f"{PEER_PYTHON} is missing: run `make bench-venv` first")
    cmd = [
        str(PEER_PYTHON),
        str(ROOT / "peer_d3rlpy_offline.py"),
        f"--algo={PEERS[algo]}",
        f"--data={peer_data(dataset, args)}",
        f"--steps={args.steps}",
        f"--seed={seed}",
    ]
    log = open(RUNS / "peer" / f"{path.stem}.log", "w")  # noqa: SIM115 (closed with the process)
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, bufsize=1
    )
    return path, proc


def finish_peer(path: Path, proc, dataset: str, seed: int, args: argparse.Namespace) -> dict:
    """Wait for d3rlpy's training, score its policy with o2o's evaluator, save the result."""
    if proc is not None:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit(f"d3rlpy failed: see {path.with_suffix('.log')}")
        result = json.loads(line)

        def policy(observations: np.ndarray) -> np.ndarray:
            proc.stdin.write(json.dumps(observations.tolist()) + "\n")
            return np.asarray(json.loads(proc.stdout.readline()), np.float32)

        task, _ = parse_task(dataset)
        evaluator = Evaluator(task, args.eval_episodes, seed=10_000 + seed, gamma=0.99)
        returns = evaluator.rollouts(policy)[0]
        proc.stdin.write("\n")
        proc.wait()
        result |= {"return": float(returns.mean()), "score": task.normalize(returns.mean())}
        path.write_text(json.dumps(result, indent=1))
    return json.loads(path.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="results/offline_NAME.{json,md}")
    parser.add_argument("--datasets", nargs="+", default=["hopper-medium"])
    parser.add_argument("--algos", nargs="+", default=list(PEERS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=10_000, help="updates per run")
    parser.add_argument("--size", type=int, default=100_000, help="transitions per dataset")
    parser.add_argument("--eval-interval", type=int, default=0, help="0: half the steps")
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--holdout-episodes", type=int, default=10)
    parser.add_argument("--peer", action="store_true", help="d3rlpy side by side")
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="ALGO.FIELD=VALUE",
        help="override a field of one agent's recipe, e.g. qc.hidden_dims=256,256; the run "
        "directories and the table name the overrides",
    )
    args = parser.parse_args()
    args.overrides = parse_overrides(args.set, args.algos)
    (RUNS / "peer").mkdir(parents=True, exist_ok=True)

    results: dict[str, dict] = {}
    for algo in args.algos:  # algorithm-major: a cut-short run still has whole rows
        for dataset in args.datasets:
            for seed in args.seeds:
                key = f"{dataset}/{label(algo, args)}/{seed}"
                start = time.perf_counter()
                peer = args.peer and algo in PEERS
                path, proc = start_peer(dataset, algo, seed, args) if peer else (None, None)
                results[key] = {"o2o": o2o_result(dataset, algo, seed, args)}
                if peer:
                    results[key]["d3rlpy"] = finish_peer(path, proc, dataset, seed, args)
                took = time.perf_counter() - start
                print(f"{key}: {json.dumps(results[key])} ({took:.0f} s)", flush=True)
                write_results(results, args)


def finished_runs(
    results: dict[str, dict], dataset: str, algo: str, args: argparse.Namespace
) -> list[dict] | None:
    """The results of every seed of (dataset, algo), or None while any is missing."""
    runs = [results.get(f"{dataset}/{label(algo, args)}/{seed}") for seed in args.seeds]
    return None if None in runs else runs


def overview_table(results: dict[str, dict], args: argparse.Namespace) -> str:
    """o2o's mean score per agent (rows) and dataset (columns), '-' until a cell's seeds have
    all finished, and the mean over datasets once a row is complete."""
    rows = []
    for algo in args.algos:
        row: dict[str, Any] = {"algo": label(algo, args)}
        for dataset in args.datasets:
            if runs := finished_runs(results, dataset, algo, args):
                row[dataset] = float(np.mean([r["o2o"]["score"] for r in runs]))
        scores = [row[d] for d in args.datasets if d in row]
        if len(scores) == len(args.datasets):
            row["mean"] = float(np.mean(scores))
        rows.append({k: f"{v:.1f}" if isinstance(v, float) else v for k, v in row.items()})
    columns = {"algo": "o2o algo", **{d: d for d in args.datasets}, "mean": "mean"}
    return (
        "Mean normalised score over seeds, per agent and dataset (the rows below have the "
        f"spread over seeds and the speeds):\n\n{markdown_table(rows, columns)}\n"
    )


def write_results(results: dict[str, dict], args: argparse.Namespace) -> None:
    """The table over every (dataset, algo) whose seeds have all finished (rewritten after
    each run, so an interrupted benchmark leaves its finished rows)."""
    rows = []
    for dataset in args.datasets:
        for algo in args.algos:
            runs = finished_runs(results, dataset, algo, args)
            if runs is None:
                continue
            row = {
                "dataset": dataset,
                "algo": label(algo, args),
                "o2o": mean_std([r["o2o"]["score"] for r in runs]),
                "o2o_ups": f"{np.mean([r['o2o']['updates_per_s'] for r in runs]):.1f}",
            }
            if all("d3rlpy" in r for r in runs):
                ratio = [r["o2o"]["updates_per_s"] / r["d3rlpy"]["updates_per_s"] for r in runs]
                row |= {
                    "d3rlpy": mean_std([r["d3rlpy"]["score"] for r in runs]),
                    "d3rlpy_ups": f"{np.mean([r['d3rlpy']['updates_per_s'] for r in runs]):.1f}",
                    "speedup": f"{np.mean(ratio):.2f}x",
                }
            rows.append(row)
    columns = {
        "dataset": "dataset",
        "algo": "o2o algo",
        "o2o": "o2o score",
        "d3rlpy": "d3rlpy score",
        "o2o_ups": "o2o updates/s",
        "d3rlpy_ups": "d3rlpy updates/s",
        "speedup": "o2o / d3rlpy speed",
    }
    command = (
        f"python benchmarks/offline.py --name {args.name} --datasets {' '.join(args.datasets)} "
        f"--algos {' '.join(args.algos)} --seeds {' '.join(map(str, args.seeds))} --steps "
        f"{args.steps} --size {args.size} --eval-interval {args.eval_interval} --eval-episodes "
        f"{args.eval_episodes} --holdout-episodes {args.holdout_episodes}"
        + (" --peer" if args.peer else "")
        + (f" --set {' '.join(args.set)}" if args.set else "")
    )
    stem = RESULTS / f"offline_{args.name}"
    stem.with_suffix(".json").write_text(
        json.dumps({"command": command, "runs": results}, indent=1)
    )
    title = (
        f"# Offline benchmark: {args.steps} updates, {len(args.seeds)} seeds, "
        f"{args.size}-transition datasets"
    )
    notes = "Scores: final evaluation, D4RL-normalised, mean ± std over seeds. " + (
        "Speeds: updates/s on one core each, the two libraries running side by side (o2o: its "
        "last evaluation interval, after compilation). d3rlpy recipes: "
        "benchmarks/peer_d3rlpy_offline.py."
        if args.peer
        else "Speeds: o2o's updates/s on one core over its last evaluation interval (compiled, "
        "evaluation excluded). A run reused from an earlier benchmark's cache keeps the speed "
        "measured then; one measured beside d3rlpy (`--peer`) shared the host's floating-point "
        "units with it, which on this host halves it."
    )
    columns = {k: v for k, v in columns.items() if any(k in r for r in rows)}
    overview = overview_table(results, args) if len(args.datasets) > 1 else ""
    stem.with_suffix(".md").write_text(
        f"{title}\n\n`{command}`\n\n{notes}\n\n{overview}{markdown_table(rows, columns)}"
    )
    print(f"wrote {stem}.{{json,md}}", flush=True)


if __name__ == "__main__":
    main()
