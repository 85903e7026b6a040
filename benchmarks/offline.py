"""Offline benchmark: normalised scores of o2o's offline agents on generated locomotion datasets
at a fixed update budget, with d3rlpy's BC, TD3+BC, CQL, IQL and AWAC on the identical data,
budget and seeds, side by side in the same run. Writes benchmarks/results/offline_NAME.{json,md}.

    python benchmarks/offline.py benchmarks/sweeps/offline/parity-cql.toml --peer
    python benchmarks/offline.py --name peer-10k --datasets hopper-medium \\
        walker2d-medium-replay --algos bc-det td3bc cql iql awac --seeds 0 1 2 --steps 10000 --peer

The study is a sweep (`o2o.sweep`): a sweep file (no online steps; NAME its stem), or the one the
flags describe, whose runs are `o2o train --algo A --task D --offline-steps STEPS --online-steps 0
--seed S` with the agent's reference recipe. Each run's score is the mean of its last evaluations
(10 deterministic episodes from fixed reset seeds each). With `--peer`, d3rlpy trains in the peer
venv (`make bench-venv`) on the same training episodes (o2o's held-out episodes are withheld from
both), in a subprocess running alongside the o2o run, and is then scored by o2o's evaluator on the
same environments and reset seeds (benchmarks/peer_d3rlpy_offline.py). Each library gets one CPU
core (XLA and torch single-threaded), so updates per second compare like with like: o2o's is the
rate over its last evaluation interval (compiled, evaluation excluded), d3rlpy's over its whole
update loop.

`--set ALGO.FIELD=VALUE` (a sweep file's [agent.ALGO]) changes one field of an agent's recipe, and
the run directories and the table's rows name the change (e.g. `--set qc.hidden_dims=256,256`: at
its reference 4x512 networks QC does about 0.4 updates/s on one core, 2 hours per 3,000 updates).

Resumable: finished o2o runs (runs/bench_offline/; reused only if their saved configuration is the
one asked for), unfinished ones resume from their checkpoints, and peer results are reused, so the
same command run again after an interruption continues where it stopped.
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
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from published import published
from update_speed import matmul_gflops

from o2o import sweep as o2o_sweep
from o2o.data.formats import save_native
from o2o.data.generate import make_dataset
from o2o.envs.tasks import parse_task
from o2o.logging import read_metrics
from o2o.report import stats
from o2o.report.report import curves_figure
from o2o.report.tables import dataset_row, markdown_table
from o2o.sweep import Unit
from o2o.train.evaluate import Evaluator
from o2o.train.pipeline import TrainConfig, hold_out_episodes

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
RUNS = Path("runs") / "bench_offline"
PEER_PYTHON = ROOT.parent / ".venv-bench" / "bin" / "python"
IQL_DECAY = 1_000_000  # peer_d3rlpy_offline.py's default IQL actor decay (the reference's run)
PEERS = {
    "bc-det": "bc",
    "td3bc": "td3+bc",
    "cql": "cql",
    "iql": "iql",
    "awac": "awac",
    "rebrac": "rebrac",
}


def parse_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    """`--set ALGO.FIELD=VALUE` items as {algo: {field: value}}; a comma makes a tuple (the
    sweep checks that each field is its algorithm's)."""
    overrides: dict[str, dict[str, Any]] = {}
    for item in items:
        target, _, text = item.partition("=")
        algo, _, field = target.partition(".")
        if not text or not field:
            raise SystemExit(f"--set {item!r}: expected ALGO.FIELD=VALUE, e.g. qc.num_samples=8")
        try:
            values = tuple(ast.literal_eval(v) for v in text.split(",") if v)
        except (ValueError, SyntaxError):
            raise SystemExit(
                f"--set {item!r}: VALUE must be Python literals (numbers, True/False, None, "
                "quoted strings), comma-separated for a tuple"
            ) from None
        overrides.setdefault(algo, {})[field] = values if "," in text else values[0]
    return overrides


def flag_spec(args: argparse.Namespace) -> dict:
    """The sweep the flags describe: each run in runs/bench_offline/DATASET-ALGO[-FIELD=VALUE
    ...]-STEPS-seedS, the seeds one at a time (side by side with d3rlpy's)."""
    return {
        "out": str(RUNS),
        "run_name": "{task}-{algo}{overrides}-{offline_steps}-seed{seed}",
        "tasks": args.datasets,
        "algos": args.algos,
        "seeds": args.seeds,
        "vmap_seeds": False,
        "train": {
            "dataset_size": args.size,
            "offline_steps": args.steps,
            "online_steps": 0,
            "eval_interval": args.eval_interval or args.steps // 2,
            "eval_episodes": args.eval_episodes,
            "holdout_episodes": args.holdout_episodes,
        },
        "agent": parse_overrides(args.set),
    }


def label(unit: Unit) -> str:
    """The unit's algorithm, with the fields the sweep sets: e.g. 'qc (hidden_dims=256x256)'."""
    return f"{unit.algo} ({', '.join(unit.overrides)})" if unit.overrides else unit.algo


def o2o_result(config: TrainConfig) -> dict:
    """One o2o run: its curve (normalised score, held-out Q bias and training seconds at every
    evaluation), final score, training speed and the devices it trained on; an unfinished one
    (no summary) up to its last evaluation, marked with the updates it reached."""
    records = read_metrics(config.out)
    path = config.out / "summary.json"
    summary = json.loads(path.read_text()) if path.exists() else {}
    devices = list(dict.fromkeys(r["device"] for r in records if "device" in r))
    last = records[-1]  # the last interval: compiled, no evaluation inside
    curve, seconds, step = [], 0.0, 0
    for r in records:  # updates only: each interval's steps at its own rate (compilation in)
        seconds += (r["step"] - step) / r["updates_per_s"] if r["step"] > step else 0.0
        step = r["step"]
        point = {"step": step, "score": r["normalized_score"], "return": r["return_mean"]}
        curve.append(point | {"seconds": seconds, "holdout_q_bias": r.get("holdout_q_bias")})
    result = {
        "curve": curve,
        "score": summary.get("offline_final_score", last["normalized_score"]),
        "return": summary.get("offline_final_return", last["return_mean"]),
        "updates_per_s": last["updates_per_s"],
        "seconds": summary.get("offline_wall_s", last.get("wall_s", 0.0)),
        "device": " then ".join(devices) or summary.get("device", "cpu"),
        "holdout_q_bias": last.get("holdout_q_bias"),
        "q_bias": last.get("q_bias"),
        "run_dir": str(config.out),
    }
    return result if summary else result | {"unfinished": last["step"]}


def peer_data(dataset: str, size: int | None, holdout_episodes: int) -> Path:
    """The training episodes o2o uses (held-out ones withheld), in env units, for d3rlpy.
    Episode ends that are not terminals (time limits, broken trajectories) become timeouts, so
    d3rlpy splits episodes where o2o does."""
    path = RUNS / "peer_data" / f"{dataset}-{size}-holdout{holdout_episodes}.npz"
    if not path.exists():
        data, _ = make_dataset(dataset, size)
        data, _ = hold_out_episodes(data, holdout_episodes)
        ends = data.timeouts | (data.episode_ends & ~data.terminals)
        save_native(dataclasses.replace(data, timeouts=ends), path)
    return path


def start_peer(config: TrainConfig, peer: str):
    """Launch d3rlpy's `peer` recipe on the data, budget and seed of o2o's run `config` unless
    its result exists; it saves its model at every evaluation step of o2o's run, to be scored
    along the way."""
    every = config.eval_interval
    stem = f"{config.task}-{peer}-{config.offline_steps}-every{every}-seed{config.seed}"
    decay = getattr(config.agent, "decay_steps", IQL_DECAY) if peer == "iql" else IQL_DECAY
    if decay != IQL_DECAY:  # o2o's IQL decays its actor's lr over another length: so does d3rlpy's
        stem += f"-decay{decay or 0}"
    betas = f"{config.agent.actor_bc},{config.agent.critic_bc}" if peer == "rebrac" else None
    if betas:  # ReBRAC's penalties are o2o's preset's for the dataset
        stem += f"-betas{betas.replace(',', '-')}"
    path = RUNS / "peer" / f"{stem}.json"
    if path.exists():
        return path, None
    if not PEER_PYTHON.exists():
        raise SystemExit(f"{PEER_PYTHON} is missing: run `make bench-venv` first")
    cmd = [
        str(PEER_PYTHON),
        str(ROOT / "peer_d3rlpy_offline.py"),
        f"--algo={peer}",
        f"--data={peer_data(config.task, config.dataset_size, config.holdout_episodes)}",
        f"--steps={config.offline_steps}",
        f"--seed={config.seed}",
        f"--eval-interval={every}",
        f"--snapshots={RUNS / 'peer' / stem}",
        f"--decay-steps={decay or 0}",
        f"--batch={config.agent.batch_size}",
        *([f"--betas={betas}"] if betas else []),
    ]
    log = open(RUNS / "peer" / f"{path.stem}.log", "w")  # noqa: SIM115 (closed with the process)
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, bufsize=1
    )
    return path, proc


def finish_peer(path: Path, proc, config: TrainConfig) -> dict:
    """Wait for d3rlpy's training, score each of its snapshots with o2o's evaluator (the same
    environments and reset seeds as o2o's evaluations), save the result with its curve."""
    if proc is not None:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit(f"d3rlpy failed: see {path.with_suffix('.log')}")
        result = json.loads(line)

        def ask(message) -> Any:
            proc.stdin.write(json.dumps(message) + "\n")
            return json.loads(proc.stdout.readline())

        def policy(observations: np.ndarray) -> np.ndarray:
            return np.asarray(ask(observations.tolist()), np.float32)

        task, _ = parse_task(config.task)
        evaluator = Evaluator(task, config.eval_episodes, seed=10_000 + config.seed, gamma=0.99)
        curve = []
        for step, seconds in zip(
            result.pop("snapshots"), result.pop("snapshot_seconds"), strict=True
        ):
            ask({"load": step})
            returns, _, _, successes = evaluator.rollouts(policy)
            score = task.score(returns, successes)
            curve.append(
                {"step": step, "score": score, "return": returns.mean(), "seconds": seconds}
            )
        proc.stdin.write("\n")
        proc.wait()
        result |= {"curve": curve, "return": curve[-1]["return"], "score": curve[-1]["score"]}
        path.write_text(json.dumps(result, indent=1, default=float))
        shutil.rmtree(path.with_suffix(""))  # the snapshots (4 MB each), scored and saved
    return json.loads(path.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "spec", nargs="?", type=Path, help="a sweep file (then --datasets ... --set are not used)"
    )
    parser.add_argument("--name", help="results/offline_NAME.{json,md} (default: the file's stem)")
    parser.add_argument("--datasets", nargs="+", default=["hopper-medium"])
    parser.add_argument("--algos", nargs="+", default=list(PEERS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=10_000, help="updates per run")
    parser.add_argument("--size", type=int, default=100_000, help="transitions per dataset")
    parser.add_argument("--eval-interval", type=int, default=0, help="0: half the steps")
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--holdout-episodes", type=int, default=10)
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="ALGO.FIELD=VALUE",
        help="override a field of one agent's recipe, e.g. qc.hidden_dims=256,256; the run "
        "directories and the table name the overrides",
    )
    parser.add_argument("--peer", action="store_true", help="d3rlpy side by side")
    parser.add_argument(
        "--no-train",
        action="store_true",
        help="train nothing: the tables of the runs already made (e.g. with `o2o sweep` on a "
        "GPU machine and copied back); unfinished ones up to their last evaluation, marked",
    )
    parser.add_argument(
        "--peer-algo",
        nargs="+",
        default=[],
        metavar="ALGO=D3RLPY_ALGO",
        help="score o2o's ALGO against another d3rlpy recipe of benchmarks/"
        "peer_d3rlpy_offline.py, e.g. awac=awac-no-entropy",
    )
    args = parser.parse_args()
    script = "benchmarks/offline.py"
    [sweep], args.name = o2o_sweep.script_sweeps(
        script, args.spec, args.name, lambda: [flag_spec(args)]
    )
    if args.spec is not None:
        command = f"python {script} {args.spec}"
    else:
        command = (
            f"python benchmarks/offline.py --name {args.name} --datasets "
            f"{' '.join(args.datasets)} --algos {' '.join(args.algos)} --seeds "
            f"{' '.join(map(str, args.seeds))} --steps {args.steps} --size {args.size} "
            f"--eval-interval {args.eval_interval} --eval-episodes {args.eval_episodes} "
            f"--holdout-episodes {args.holdout_episodes}"
        )
    command += (
        (" --peer" if args.peer else "")
        + (f" --set {' '.join(args.set)}" if args.set and args.spec is None else "")
        + (f" --peer-algo {' '.join(args.peer_algo)}" if args.peer_algo else "")
        + (" --no-train" if args.no_train else "")
    )
    # One run at a time, algorithm-major (a cut-short benchmark still has whole rows), each
    # beside its d3rlpy run.
    order = {a: i for i, a in enumerate(sweep.algos)} | {t: i for i, t in enumerate(sweep.tasks)}
    runs = sorted(
        ((unit, config) for unit in sweep.units(skip_finished=False) for config in unit.configs()),
        key=lambda run: (order[run[0].algo], order[run[0].task], run[1].seed),
    )
    if any(config.online_steps for _, config in runs):
        raise SystemExit(
            f"{sweep.path}: an offline benchmark has no online steps; set [train] online_steps = 0"
        )
    args.datasets, args.algos, args.seeds = list(sweep.tasks), list(sweep.algos), sweep.seeds
    args.labels = {unit.algo: label(unit) for unit, _ in runs}
    args.sizes = {config.task: config.dataset_size for _, config in runs}
    args.command, args.title = command, title([config for _, config in runs])
    args.peaks = host_peaks(RESULTS / f"offline_{args.name}.json")
    peers = PEERS | dict(item.split("=", 1) for item in args.peer_algo)
    (RUNS / "peer").mkdir(parents=True, exist_ok=True)

    results: dict[str, dict] = {}
    for unit, config in runs:
        key = f"{config.task}/{label(unit)}/{config.seed}"
        start = time.perf_counter()
        peer = peers[unit.algo] if args.peer and unit.algo in PEERS else None
        path, proc = start_peer(config, peer) if peer else (None, None)
        if not o2o_sweep.finished(config):
            if not args.no_train:
                o2o_sweep.run_unit(dataclasses.replace(unit, seeds=(config.seed,)))
            elif len(read_metrics(config.out)) < 2:  # no evaluation after the first
                print(f"{key}: not begun, left out (--no-train)", flush=True)
                continue
        results[key] = {"o2o": o2o_result(config)}
        if peer:
            results[key]["d3rlpy"] = finish_peer(path, proc, config)
        took = time.perf_counter() - start
        print(f"{key}: {json.dumps(results[key])} ({took:.0f} s)", flush=True)
        write_results(results, args)


def title(configs: list[TrainConfig]) -> str:
    """The results' heading: the budget, seeds, data, networks and evaluations of the runs."""

    def values(field: str, sep: str = "/") -> str:  # several: a sweep with [train.ALGO]
        found = {getattr(c, field) for c in configs}
        return sep.join(map(str, sorted(found, key=lambda v: (type(v).__name__, v))))

    networks: dict[str, list[str]] = {}  # hidden widths -> the algorithms with them
    for c in configs:
        algos = networks.setdefault("x".join(map(str, c.agent.hidden_dims)), [])
        algos += [] if c.algo in algos else [c.algo]
    return (
        f"# Offline benchmark: {values('offline_steps')} updates, seeds {values('seed', ' ')}, "
        f"{values('dataset_size').replace('None', 'full-size')}-transition datasets, networks "
        + "; ".join(f"{widths} ({', '.join(algos)})" for widths, algos in networks.items())
        + f", evaluations every {values('eval_interval')} updates "
        f"({values('eval_episodes')} episodes)"
    )


def finished_runs(
    results: dict[str, dict], dataset: str, algo: str, args: argparse.Namespace
) -> list[dict] | None:
    """The results of every seed of (dataset, algo), or None while any is missing."""
    runs = [results.get(f"{dataset}/{args.labels[algo]}/{seed}") for seed in args.seeds]
    return None if None in runs else runs


def scores(runs: list[dict], library: str) -> list[float]:
    """Each run's score (`stats.run_score`: the mean of its last evaluations) in `library`."""
    return [stats.run_score([p["score"] for p in r[library]["curve"]]) for r in runs]


def overview_table(results: dict[str, dict], args: argparse.Namespace) -> str:
    """o2o's IQM score per agent (rows) and dataset (columns), '-' until a cell's seeds all
    have results, '(unfinished)' beside one with a run stopped short (`--no-train`), and the
    IQM over every run of a row whose cells are all complete and finished (datasets pooled)."""
    rows = []
    for algo in args.algos:
        row: dict[str, Any] = {"algo": args.labels[algo]}
        cells, short = {}, False
        for dataset in args.datasets:
            if runs := finished_runs(results, dataset, algo, args):
                cells[dataset] = scores(runs, "o2o")
                row[dataset] = stats.aggregate(cells[dataset])
                if any("unfinished" in r["o2o"] for r in runs):
                    row[dataset], short = f"{row[dataset]} (unfinished)", True
        if len(cells) == len(args.datasets) and not short:
            row["all"] = stats.aggregate(np.concatenate(list(cells.values())))
        rows.append(row)
    columns = {"algo": "o2o algo", **{d: d for d in args.datasets}, "all": "all datasets"}
    return f"o2o's score per agent and dataset:\n\n{markdown_table(rows, columns)}\n"


def write_results(results: dict[str, dict], args: argparse.Namespace) -> None:
    """The tables over every (dataset, algo) whose seeds have all finished, the curves of both
    libraries per dataset (table and plot) and, over several datasets, performance profiles
    (rewritten after each run, so an interrupted benchmark leaves its finished rows)."""
    stem = RESULTS / f"offline_{args.name}"
    rows, sections, profiles, cited = [], [], {}, set()
    for dataset in args.datasets:
        curves: dict[str, list[dict[int, float]]] = {}
        biases: dict[str, list[dict[int, float]]] = {}
        behaviour = data_score(dataset, args.sizes[dataset])
        for algo in args.algos:
            runs = finished_runs(results, dataset, algo, args)
            if runs is None:
                continue
            name = args.labels[algo]
            o2o = scores(runs, "o2o")
            reached = sorted({r["o2o"]["unfinished"] for r in runs if "unfinished" in r["o2o"]})
            row = {
                "dataset": dataset,
                "algo": name + (f" (unfinished: {'/'.join(map(str, reached))})" if reached else ""),
                "o2o": stats.aggregate(o2o),
                "o2o_ups": f"{np.mean([r['o2o']['updates_per_s'] for r in runs]):.1f}",
                "o2o_reach": time_to_reach(runs, "o2o", behaviour),
                "o2o_fallen": collapsed(runs, "o2o"),
            }
            if found := published("offline", dataset, algo):
                row["published"], _ = found
                cited.add(found[1])
            curves[f"o2o {name}"] = [_curve(r["o2o"]) for r in runs]
            if bias := [_curve(r["o2o"], "holdout_q_bias") for r in runs if _has_bias(r)]:
                biases[name] = bias
            profiles.setdefault(f"o2o {name}", []).append(o2o)
            if all("d3rlpy" in r for r in runs):
                d3rlpy = scores(runs, "d3rlpy")
                row |= {
                    "d3rlpy": stats.aggregate(d3rlpy),
                    "difference": str(stats.iqm_difference(o2o, d3rlpy)),
                    "d3rlpy_ups": f"{np.mean([r['d3rlpy']['updates_per_s'] for r in runs]):.1f}",
                    "d3rlpy_reach": time_to_reach(runs, "d3rlpy", behaviour),
                    "d3rlpy_fallen": collapsed(runs, "d3rlpy"),
                }
                curves[f"d3rlpy {name}"] = [_curve(r["d3rlpy"]) for r in runs]
                profiles.setdefault(f"d3rlpy {name}", []).append(d3rlpy)
            rows.append(row)
        if curves:
            sections.append(_curves_section(dataset, curves, stem, behaviour))
        if biases:
            sections.append(_bias_section(dataset, biases, stem))
    columns = {
        "dataset": "dataset",
        "algo": "o2o algo",
        "o2o": "o2o score",
        "d3rlpy": "d3rlpy score",
        "difference": "o2o − d3rlpy (IQM, 95% CI)",
        "o2o_ups": "o2o updates/s",
        "d3rlpy_ups": "d3rlpy updates/s",
        "o2o_reach": "o2o to the data's score",
        "d3rlpy_reach": "d3rlpy to the data's score",
        "o2o_fallen": "o2o collapsed",
        "d3rlpy_fallen": "d3rlpy collapsed",
        "published": "published",
    }
    command = args.command
    stem.with_suffix(".json").write_text(
        json.dumps({"command": command, "matmul_gflops": args.peaks, "runs": results}, indent=1)
    )
    title = args.title
    notes = (
        f"Scores: normalised (D4RL's scale; success tasks: success rate x 100). "
        f'{stats.note(run_scores=True)} "To the data\'s score": the '
        "median over seeds of the training time (updates only, one core) until an evaluation "
        "first scores at least the dataset's own normalised score (its behaviour policy's), "
        'with how many seeds got there. "Collapsed": seeds whose run score ends below half '
        "their best evaluation. "
    ) + (
        "Speeds: updates/s on one core each, the two libraries running side by side (o2o: its "
        "last evaluation interval, after compilation; d3rlpy: its whole run), by the wall "
        "clock, which also ran while the benchmark was paused for other measurements: they "
        "compare nothing (clean side-by-side speeds: offline_speed.md). "
        f"{_cpu_hours(results)} d3rlpy recipes: "
        "benchmarks/peer_d3rlpy_offline.py; its policy is scored by o2o's evaluator on the "
        "same environments and reset seeds, at the same steps."
        if args.peer
        else "Speeds: o2o's updates/s over its last evaluation interval (compiled, evaluation "
        "excluded), on one core unless said below. A run reused from an earlier benchmark's "
        "cache keeps the speed measured then; one measured beside d3rlpy (`--peer`) shared the "
        "host's floating-point units with it, which on this host halves it."
    )
    if any("unfinished" in r["o2o"] for r in results.values()):
        notes += (
            ' "Unfinished: N": a run stopped at N updates (`--no-train` shows it as it stands; '
            "its score is that of its last three evaluations)."
        )
    devices = sorted({r["o2o"]["device"] for r in results.values() if "device" in r["o2o"]})
    if any(device != "cpu" for device in devices):
        hours = sum(r["o2o"]["seconds"] for r in results.values()) / 3600
        notes += (
            f" Trained on {', '.join(devices)} (`o2o sweep`, several runs sharing the device, "
            "a row's seeds updated together in one vmapped call): updates/s and times are that "
            f"device's, shared, and compare with nothing on a CPU; {hours:.2f} h of runs."
        )
    columns = {k: v for k, v in columns.items() if any(k in r for r in rows)}
    if cited:
        notes += f" Published: {'; '.join(sorted(cited))} (benchmarks/published/)."
    notes += (
        " Host: one-thread float32 1024x1024 matmul peak "
        f"{', '.join(f'{p:.0f}' for p in args.peaks)} GFLOP/s, measured at each start of this "
        "study (the runs' updates/s scale with it; other jobs on the host lower it)."
    )
    overview = overview_table(results, args) if len(args.datasets) > 1 else ""
    if len(args.datasets) > 1 and profiles:
        overview += _profile_section(profiles, args, stem)
    text = f"{title}\n\n`{command}`\n\n{notes}\n\n{overview}{markdown_table(rows, columns)}\n"
    stem.with_suffix(".md").write_text(text + "".join(sections))
    print(f"wrote {stem}.{{json,md}}", flush=True)


def _cpu_hours(results: dict[str, dict]) -> str:
    """The wall-clock hours of every run, one core each: an upper bound on its CPU-hours."""
    hours = {
        library: sum(r[library].get("seconds", 0.0) for r in results.values() if library in r)
        / 3600
        for library in ("o2o", "d3rlpy")
    }
    return (
        f"Time: {hours['o2o']:.2f} h of o2o runs and {hours['d3rlpy']:.2f} h of d3rlpy runs "
        "(wall clock, one core each, evaluations and any pause included)."
    )


def host_peaks(path: Path) -> list[float]:
    """The matmul peaks recorded at the earlier starts of the study whose results are `path`,
    and this start's (`update_speed.matmul_gflops`, one thread as the runs)."""
    earlier = json.loads(path.read_text()).get("matmul_gflops", []) if path.exists() else []
    return [*earlier, matmul_gflops()]


def data_score(dataset: str, size: int | None) -> float:
    """The normalised score of `dataset` itself: its behaviour policy's."""
    data, _ = make_dataset(dataset, size)
    return dataset_row(dataset, data, parse_task(dataset)[0])["normalized_score"]


def time_to_reach(runs: list[dict], library: str, score: float) -> str:
    """The median over `runs` of `library`'s training time until its first evaluation at or
    above `score`, and how many runs got there ('-' where the curve has no times)."""
    times = []
    for run in runs:
        curve = run[library]["curve"]
        if any("seconds" not in p for p in curve):
            return "-"
        times += [next((p["seconds"] for p in curve if p["score"] >= score), None)]
    reached = [t for t in times if t is not None]
    when = f"{np.median(reached) / 3600:.2f} h, " if reached else ""
    return f"{when}{len(reached)}/{len(times)} seeds"


def collapsed(runs: list[dict], library: str) -> str:
    """How many of `runs` collapsed in `library`: their run score (`stats.run_score`) below
    half their best evaluation."""
    curves = [[p["score"] for p in run[library]["curve"]] for run in runs]
    fallen = sum(stats.run_score(c) < 0.5 * max(c) for c in curves)
    return f"{fallen}/{len(curves)}"


def _has_bias(run: dict) -> bool:
    return all(p.get("holdout_q_bias") is not None for p in run["o2o"]["curve"])


def _curve(result: dict, key: str = "score") -> dict[int, float]:
    return {p["step"]: p[key] for p in result["curve"]}


def _bias_section(dataset: str, biases: dict[str, list[dict[int, float]]], stem: Path) -> str:
    """o2o's held-out Q bias against updates for each agent on `dataset`: a table and a plot."""
    figure = curves_figure(biases, "held-out Q − MC return", zero_line=True)
    stem.mkdir(parents=True, exist_ok=True)
    figure.savefig(stem / f"{dataset}_q_bias.png", dpi=110)
    plt.close(figure)
    link = f"{stem.name}/{dataset}_q_bias.png"
    return (
        f"\n## {dataset}: Q bias on held-out episodes\n\nMean Q(s, a) of o2o's critics minus "
        "the discounted Monte-Carlo return that followed, on dataset episodes kept out of "
        "training (their logged actions), in the environment's reward units.\n\n"
        f"![Q bias]({link})\n\n{_steps_table(biases)}\n"
    )


def _steps_table(curves: dict[str, list[dict[int, float]]]) -> str:
    """One row per evaluation step, one column per curve: its value over runs."""
    rows = []
    for step in sorted({s for runs in curves.values() for run in runs for s in run}):
        row: dict[str, Any] = {"step": step}
        for name, runs in curves.items():
            values = [run[step] for run in runs if step in run]
            if values:
                row[name] = stats.aggregate(values)
        rows.append(row)
    return markdown_table(rows, {"step": "updates", **{k: k for k in curves}})


def _curves_section(
    dataset: str, curves: dict[str, list[dict[int, float]]], stem: Path, behaviour: float
) -> str:
    """Score against updates for each library and agent on `dataset` (the data's own score
    as a line): a table and a plot."""
    stem.mkdir(parents=True, exist_ok=True)
    figure = curves_figure(curves, "normalised score")
    figure.axes[0].axhline(behaviour, color="grey", ls="--", lw=0.8, label="the data")
    figure.axes[0].legend(fontsize=8)
    figure.savefig(stem / f"{dataset}_curves.png", dpi=110)
    plt.close(figure)
    link = f"{stem.name}/{dataset}_curves.png"
    return (
        f"\n## {dataset}: score along training\n\nThe data's own score: {behaviour:.1f}.\n\n"
        f"![curves]({link})\n\n{_steps_table(curves)}\n"
    )


def _profile_section(profiles: dict[str, list[list[float]]], args, stem: Path) -> str:
    """Performance profiles over the datasets (each agent's runs pooled over tasks): the share
    of runs above each score, with its 95% band; rows of complete agents only."""
    complete = {k: np.asarray(v).T for k, v in profiles.items() if len(v) == len(args.datasets)}
    if not complete or not stats.available():
        return ""
    taus = np.linspace(0, 110, 111)
    fractions, bands = stats.performance_profile(complete, taus)
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    for name, fraction in fractions.items():
        (line,) = ax.plot(taus, fraction, label=name)
        ax.fill_between(taus, *bands[name], color=line.get_color(), alpha=0.2)
    ax.set(xlabel="normalised score τ", ylabel="fraction of runs with score > τ")
    ax.legend(fontsize=8)
    fig.tight_layout()
    stem.mkdir(parents=True, exist_ok=True)
    fig.savefig(stem / "performance_profile.png", dpi=110)
    plt.close(fig)
    image = f"{stem.name}/performance_profile.png"
    return f"Performance profiles over the datasets:\n\n![profiles]({image})\n\n"


if __name__ == "__main__":
    main()
