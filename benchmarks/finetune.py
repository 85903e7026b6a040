"""Offline-to-online benchmark: CQL, Cal-QL, IQL, AWAC (and the flow agents FQL, IDQL, QC,
FPO) pre-trained then fine-tuned, and RLPD from scratch with the data mixed in, on generated
datasets, several seeds. Writes
benchmarks/results/finetune_NAME.{json,md} and, per dataset, a report (score and Q bias over
steps, the dip table) in benchmarks/results/finetune_NAME/DATASET/; the table checks the claims
about the switch on the runs (`claims_table`).

    python benchmarks/finetune.py benchmarks/sweeps/finetune/switch.toml
    python benchmarks/finetune.py --name small --datasets hopper-medium pointmaze-umaze \
        --seeds 0 1 2 --offline-steps 20000 --online-steps 20000

The study is a sweep (`o2o.sweep`): a sweep file, NAME its stem, or the one the flags describe.
The flags' runs are `o2o train --algo A --task DATASET --offline-steps N --online-steps M
--seed S` (RLPD: no offline steps) with the agent's reference recipe for the task, the preset
`o2o train` picks (on PointMaze the `navigation` recipes: the reference AntMaze ones; FQL and
QC have none); `--hidden` sets every network's width, the flows' included, and IQL mixes the
online data in as its reference does (`flag_spec`). Runs go to runs/bench_finetune/; finished
ones are reused (only under the settings they were made with), unfinished ones resume, so an
interrupted benchmark continues where it stopped; `--finished-only` writes the tables from the
finished runs alone, while others are still training. `--workers N` or `--ray-address ADDR`
spread the runs (`o2o sweep`'s backends); the tables are then written once, at the end.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

# One core per run: set before JAX starts its CPU client.
os.environ.setdefault(
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)

from offline import host_peaks
from published import published

from o2o import sweep as o2o_sweep
from o2o.logging import console
from o2o.report import stats
from o2o.report.report import fine_tuning_table, render_report
from o2o.report.tables import markdown_table
from o2o.sweep import Sweep
from o2o.train.pipeline import default_config

MIN_DIP = 1.0  # normalised-score points: smaller falls are evaluation noise, not unlearning
RESULTS = Path(__file__).resolve().parent / "results"
RUNS = Path("runs") / "bench_finetune"


def flag_spec(dataset: str, args: argparse.Namespace) -> dict:
    """The sweep the flags describe on one dataset. Relative to each agent's recipe for it:
    `--hidden` for every network; `--start-steps` caps the online steps before updates of the
    agents that wait (RLPD, QC); IQL's actor learning rate stays constant (the reference's
    fine-tuning config), IDQL's decays over the offline budget (its actor is frozen online), and
    IQL's fine-tuning appends online transitions to the buffer holding the dataset, uniform
    over the union (ikostrikov/implicit_q_learning `train_finetune.py`), not the preset's fixed
    `offline_ratio` stand-in."""
    hidden = list(args.hidden)
    agent: dict[str, dict] = {}
    for algo in args.algos:
        recipe = default_config(algo, task=dataset).agent
        fields = {"hidden_dims": hidden}
        for field in ("actor_hidden_dims", "value_hidden_dims"):  # flow agents' other networks
            if hasattr(recipe, field):
                fields[field] = hidden
        if recipe.start_steps > 0:
            fields["start_steps"] = min(recipe.start_steps, args.start_steps)
        if algo == "iql":  # ikostrikov's fine-tuning config: no actor lr decay
            fields["decay_steps"] = None
        elif algo == "idql" and recipe.decay_steps is not None:
            fields["decay_steps"] = args.offline_steps
        agent[algo] = fields
    per_algo = {"rlpd": {"offline_steps": 0}, "iql": {"data_mix": "proportional"}}
    width = "x".join(map(str, args.hidden))
    return {
        "out": str(RUNS),
        "run_name": f"{{task}}-{{algo}}-{width}-{{offline_steps}}-{{online_steps}}-seed{{seed}}",
        "tasks": [dataset],
        "algos": args.algos,
        "seeds": args.seeds,
        "vmap_seeds": False,
        "train": {
            "dataset_size": args.size,
            "offline_steps": args.offline_steps,
            "online_steps": args.online_steps,
            "eval_interval": args.eval_interval,
            "eval_episodes": args.eval_episodes,
        }
        | {a: f for a, f in per_algo.items() if a in args.algos},
        "agent": agent,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "spec",
        nargs="?",
        type=Path,
        help="a sweep file (then the flags below down to --start-steps are not used)",
    )
    parser.add_argument("--name", help="results/finetune_NAME (default: the sweep file's stem)")
    parser.add_argument("--datasets", nargs="+", default=["hopper-medium", "pointmaze-umaze"])
    parser.add_argument("--algos", nargs="+", default=["cql", "calql", "iql", "awac", "rlpd"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--offline-steps", type=int, default=20_000)
    parser.add_argument("--online-steps", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=100_000, help="transitions per dataset")
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    parser.add_argument("--eval-interval", type=int, default=2_000)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument(
        "--start-steps",
        type=int,
        default=5_000,
        help="online steps before updates start, for the agents that wait (RLPD, QC: 5,000)",
    )
    parser.add_argument(
        "--finished-only",
        action="store_true",
        help="write the tables from the runs already finished; train nothing",
    )
    parser.add_argument("--workers", type=int, default=1, help="runs at a time on this machine")
    parser.add_argument("--ray-address", help="run on a Ray cluster (auto, local or an address)")
    args = parser.parse_args()
    script = "benchmarks/finetune.py"
    sweeps, args.name = o2o_sweep.script_sweeps(
        script, args.spec, args.name, lambda: [flag_spec(d, args) for d in args.datasets]
    )
    if args.spec is not None:
        command = f"python {script} {args.spec}"
    else:
        command = (
            f"python benchmarks/finetune.py --name {args.name} --datasets "
            f"{' '.join(args.datasets)} --algos {' '.join(args.algos)} --seeds "
            f"{' '.join(map(str, args.seeds))} --offline-steps {args.offline_steps} "
            f"--online-steps {args.online_steps} --size {args.size} --hidden "
            f"{' '.join(map(str, args.hidden))} --eval-interval {args.eval_interval} "
            f"--eval-episodes {args.eval_episodes} --start-steps {args.start_steps}"
        )
    peaks = host_peaks(RESULTS / f"finetune_{args.name}.json")
    units = [] if args.finished_only else [u for s in sweeps for u in s.units()]
    units.sort(key=lambda u: min(u.seeds))  # seed-major: an interruption leaves whole rows
    together = args.ray_address is not None or args.workers > 1
    if together:
        failures = (
            o2o_sweep.run_ray(units, args.ray_address, 1.0)
            if args.ray_address is not None
            else o2o_sweep.run_local(units, args.workers)
        )
    else:  # one run after another, the tables after each: an interruption loses nothing
        failures = {}
        for unit in units:
            failures |= o2o_sweep.run_local([unit], 1)
            write_results(sweeps, args.name, command, peaks)
    if together or not units:
        write_results(sweeps, args.name, command, peaks)
    if failures:
        raise SystemExit(
            f"{len(failures)} unit(s) failed twice: {', '.join(u.label for u in failures)}"
        )


def claims_table(summaries: list[dict]) -> str:
    """The survey's claims about the switch, checked on one dataset's runs with intervals over
    seeds (`o2o.report.stats`): a claim holds ("yes") or fails ("no") only where its 95%
    interval decides it, and is "unresolved" where the interval spans the line; one seed
    decides nothing. A dip counts from MIN_DIP points; a claim whose agents have no finished
    run is left out."""
    by_algo: dict[str, list[dict]] = {}
    for summary in summaries:
        by_algo.setdefault(summary["algo"], []).append(summary)

    def values(algo: str, key: str) -> list[float]:
        return [r[key] for r in by_algo.get(algo, []) if r.get(key) is not None]

    rows: list[dict[str, str]] = []

    def add(claim: str, measured: str, holds: str) -> None:
        rows.append({"claim": claim, "measured": measured, "holds": holds})

    def decide(interval: stats.Interval, line: float, above: bool) -> str:
        """yes if the interval lies on the claimed side of `line` (`above` it, or below),
        no if it lies wholly on the other side."""
        if interval.runs < 2:
            return "untestable: one seed"
        if (interval.low >= line) if above else (interval.high <= line):
            return "yes"
        if (interval.high < line) if above else (interval.low > line):
            return "no"
        return f"unresolved: the interval spans {line:g}"

    for key, where in (("q_bias_at_switch", "rollouts"), ("holdout_q_bias_at_switch", "held-out")):
        if cql := values("cql", key):
            interval = stats.iqm(cql)
            claim = f"CQL's Q is below the MC return at the switch ({where})"
            add(claim, f"cql {interval}", decide(interval, 0.0, above=False))
    cql_dips, calql_dips = values("cql", "dip"), values("calql", "dip")
    cql_dips_verdict = None
    if cql_dips:
        interval = stats.iqm(cql_dips)
        cql_dips_verdict = decide(interval, MIN_DIP, above=True)
        add("CQL dips after the switch", f"cql {interval}", cql_dips_verdict)
    if cql_dips and calql_dips:
        difference = stats.iqm_difference(calql_dips, cql_dips)
        holds = decide(difference, 0.0, above=False)
        if cql_dips_verdict == "no":
            holds = "untestable: CQL does not dip"
        add("Cal-QL dips less than CQL", f"calql − cql {difference}", holds)
    for key, name, above in (
        ("final_online_score", "final online score", True),
        ("regret", "regret", False),
    ):
        rlpd = values("rlpd", key)
        rivals = {a: values(a, key) for a in ("cql", "calql") if values(a, key)}
        if not rlpd or not rivals:
            continue
        differences = {a: stats.iqm_difference(rlpd, v) for a, v in rivals.items()}
        verdicts = [decide(d, 0.0, above) for d in differences.values()]
        if "no" in verdicts:
            holds = "no"
        elif all(v == "yes" for v in verdicts):
            holds = "yes"
        else:
            holds = next(v for v in verdicts if v != "yes")
        measured = "; ".join(f"rlpd − {a} {d}" for a, d in differences.items())
        add(f"RLPD matches or beats CQL and Cal-QL ({name})", measured, holds)
    columns = {"claim": "claim", "measured": "measured (IQM [95% CI] over seeds)", "holds": "holds"}
    return markdown_table(rows, columns) if rows else ""


def published_table(dataset: str, algos: list[str]) -> str:
    """The published offline → online values of the study's agents on `dataset`, if any."""
    found = {a: published("finetune", dataset, a) for a in dict.fromkeys(algos)}
    rows = [{"algo": a, "value": v[0]} for a, v in found.items() if v]
    if not rows:
        return ""
    cited = "; ".join(sorted({v[1] for v in found.values() if v}))
    table = markdown_table(rows, {"algo": "algo", "value": "offline → online"})
    return f"\nPublished ({cited}; benchmarks/published/):\n\n{table}\n"


def finished_runs(configs: list) -> dict[str, list[Path]]:
    """The finished run directories of `configs` per dataset, seed-major."""
    runs: dict[str, list[Path]] = {}
    for config in sorted(configs, key=lambda c: c.seed):
        if (config.out / "summary.json").exists():
            runs.setdefault(config.task, []).append(config.out)
    return runs


def write_results(sweeps: list[Sweep], name: str, command: str, peaks: list[float]) -> None:
    """The table, summaries and per-dataset reports of the runs finished so far; `peaks`: the
    host's matmul peaks measured at each start of the study (`offline.host_peaks`)."""
    stem = RESULTS / f"finetune_{name}"
    configs = [c for s in sweeps for c in s.configs()]
    runs = finished_runs(configs)
    summaries = {
        d: [json.loads((r / "summary.json").read_text()) for r in rs] for d, rs in runs.items()
    }
    sections = []
    for dataset, run_dirs in runs.items():
        report = render_report(run_dirs, stem / dataset, title=f"Fine-tuning on {dataset}")
        link = report.with_suffix(".md").relative_to(RESULTS)
        claims = claims_table(summaries[dataset])
        claims = f"\nThe claims about the switch, on these runs:\n\n{claims}" if claims else ""
        sections.append(
            f"## {dataset} ([report]({link}))\n\n{fine_tuning_table(run_dirs)}{claims}"
            + published_table(dataset, [c.algo for c in configs if c.task == dataset])
        )
    stem.with_suffix(".json").write_text(
        json.dumps({"command": command, "matmul_gflops": peaks, "runs": summaries}, indent=1)
    )
    seeds = sorted({c.seed for c in configs})
    widths = sorted({"x".join(map(str, c.agent.hidden_dims)) for c in configs})
    title = (
        f"# Offline-to-online: {max(c.offline_steps for c in configs)} offline updates, "
        f"{max(c.online_steps for c in configs)} online steps, seeds "
        f"{' '.join(map(str, seeds))} (the seeds column: how many finished), networks "
        f"{', '.join(widths)}"
    )
    host = (
        "Host: one-thread float32 1024x1024 matmul peak "
        f"{', '.join(f'{p:.0f}' for p in peaks)} GFLOP/s, measured at each start of this study."
    )
    text = f"{title}\n\n`{command}`\n\n{stats.note()} {host}\n\n"
    stem.with_suffix(".md").write_text(text + "\n".join(sections))
    console.print(f"wrote {stem}.{{json,md}} and the reports in {stem}/")


if __name__ == "__main__":
    main()
