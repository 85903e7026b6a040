"""Offline-to-online benchmark: CQL, Cal-QL, IQL, AWAC (and the flow agents FQL, IDQL, QC,
FPO) pre-trained then fine-tuned, and RLPD from scratch with the data mixed in, on generated
datasets, several seeds. Writes
benchmarks/results/finetune_NAME.{json,md} and, per dataset, a report (score and Q bias over
steps, the dip table) in benchmarks/results/finetune_NAME/DATASET/; the table checks the claims
about the switch on the runs (`claims_table`).

    python benchmarks/finetune.py --name small --datasets hopper-medium pointmaze-umaze \\
        --seeds 0 1 2 --offline-steps 20000 --online-steps 20000

Each run is `o2o train --algo A --task DATASET --offline-steps N --online-steps M --seed S`
(RLPD: no offline steps) with the agent's reference recipe for the task, the preset `o2o
train` picks (on PointMaze the `navigation` recipes: the reference AntMaze ones; FQL and QC
have none). `--hidden` sets every network's width, the flows' included. Finished runs in
runs/bench_finetune/ are reused (after checking that their saved configuration is the one
asked for), so an interrupted benchmark resumes; `--finished-only` writes the tables from the
finished runs alone, while others are still training.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

# One core for the benchmark: set before JAX starts its CPU client.
os.environ.setdefault(
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)

from o2o.report import stats
from o2o.report.report import fine_tuning_table, render_report
from o2o.report.tables import markdown_table
from o2o.train.pipeline import check_resumable, default_config, train

MIN_DIP = 1.0  # normalised-score points: smaller falls are evaluation noise, not unlearning
RESULTS = Path(__file__).resolve().parent / "results"
RUNS = Path("runs") / "bench_finetune"


def run(dataset: str, algo: str, seed: int, args: argparse.Namespace) -> Path | None:
    """Train (or reuse) one run; its directory (None: not finished, under --finished-only)."""
    offline_steps = 0 if algo == "rlpd" else args.offline_steps
    width = "x".join(map(str, args.hidden))
    out = RUNS / f"{dataset}-{algo}-{width}-{offline_steps}-{args.online_steps}-seed{seed}"
    config = default_config(
        algo,
        task=dataset,
        dataset_size=args.size,
        offline_steps=offline_steps,
        online_steps=args.online_steps,
        seed=seed,
        eval_interval=args.eval_interval,
        eval_episodes=args.eval_episodes,
        out=out,
    )
    agent = dataclasses.replace(config.agent, hidden_dims=tuple(args.hidden))
    for field in ("actor_hidden_dims", "value_hidden_dims"):  # flow agents' other networks
        if hasattr(agent, field):
            agent = dataclasses.replace(agent, **{field: tuple(args.hidden)})
    if agent.start_steps > 0:  # RLPD's random warm-up, QC's wait before updates
        agent = dataclasses.replace(agent, start_steps=min(agent.start_steps, args.start_steps))
    if algo == "iql" and agent.decay_steps is not None:
        agent = dataclasses.replace(agent, decay_steps=offline_steps)  # cosine over the budget
    # IQL's reference fine-tuning appends online transitions to the buffer holding the dataset
    # (ikostrikov/implicit_q_learning `train_finetune.py`): uniform over the union, not the
    # preset's fixed `offline_ratio` stand-in.
    data_mix = "proportional" if algo == "iql" else config.data_mix
    config = dataclasses.replace(config, agent=agent, data_mix=data_mix)
    if (out / "summary.json").exists():
        check_resumable(out, config)  # a finished run is reused only under the same settings
    elif args.finished_only:
        return None
    else:
        train(config)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True)
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
    args = parser.parse_args()
    command = (
        f"python benchmarks/finetune.py --name {args.name} --datasets {' '.join(args.datasets)} "
        f"--algos {' '.join(args.algos)} --seeds {' '.join(map(str, args.seeds))} "
        f"--offline-steps {args.offline_steps} --online-steps {args.online_steps} --size "
        f"{args.size} --hidden {' '.join(map(str, args.hidden))} --eval-interval "
        f"{args.eval_interval} --eval-episodes "
        f"{args.eval_episodes} --start-steps {args.start_steps}"
    )
    runs: dict[str, list[str]] = {}
    for seed in args.seeds:  # seed-major: an interrupted benchmark has every row, fewer seeds
        for dataset in args.datasets:
            for algo in args.algos:
                if (out := run(dataset, algo, seed, args)) is not None:
                    runs.setdefault(dataset, []).append(str(out))
                    if not args.finished_only:  # after each run: an interruption loses nothing
                        write_results(runs, args, command)
    if args.finished_only:
        write_results(runs, args, command)


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


def write_results(runs: dict[str, list[str]], args: argparse.Namespace, command: str) -> None:
    """The table, summaries and per-dataset reports of the runs finished so far."""
    stem = RESULTS / f"finetune_{args.name}"
    summaries = {
        d: [json.loads((Path(r) / "summary.json").read_text()) for r in rs]
        for d, rs in runs.items()
    }
    sections = []
    for dataset, run_dirs in runs.items():
        report = render_report(run_dirs, stem / dataset, title=f"Fine-tuning on {dataset}")
        link = report.with_suffix(".md").relative_to(RESULTS)
        claims = claims_table(summaries[dataset])
        claims = f"\nThe claims about the switch, on these runs:\n\n{claims}" if claims else ""
        sections.append(f"## {dataset} ([report]({link}))\n\n{fine_tuning_table(run_dirs)}{claims}")
    stem.with_suffix(".json").write_text(
        json.dumps({"command": command, "runs": summaries}, indent=1)
    )
    title = (
        f"# Offline-to-online: {args.offline_steps} offline updates, {args.online_steps} online "
        f"steps, seeds {' '.join(map(str, args.seeds))} (the seeds column: how many finished), "
        f"networks {'x'.join(map(str, args.hidden))}"
    )
    text = f"{title}\n\n`{command}`\n\n{stats.note()}\n\n"
    stem.with_suffix(".md").write_text(text + "\n".join(sections))
    print(f"wrote {stem}.{{json,md}} and the reports in {stem}/")


if __name__ == "__main__":
    main()
