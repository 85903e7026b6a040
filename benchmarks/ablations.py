"""Ablations of an offline parity study, one table: each variant's o2o score against the
baseline study's o2o and d3rlpy scores of the same agent and dataset.

    python benchmarks/ablations.py --name awac_ablations \\
        --baseline benchmarks/results/offline_parity.json \\
        benchmarks/results/offline_parity-awac-*.json

The inputs are `offline.py` results (its JSON); a variant is every run group of another file
than the baseline, e.g. `hopper-medium/awac (softmax_weights=True)` (an agent with settings)
or `hopper-medium/awac` (the agent as the code stood when that file's runs ran), compared
with the baseline's `hopper-medium/awac`. Differences are IQM differences of the per-run scores
(`stats.run_score`) with 95% bootstrap intervals; "fallen" counts a variant's evaluations after
the first below `--fallen` (a policy that cannot stand scores about 1 on hopper).
Writes benchmarks/results/NAME.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections import defaultdict
from pathlib import Path

from offline import RESULTS, scores

from o2o.report import stats
from o2o.report.tables import markdown_table


def groups(path: Path, upto: int | None = None) -> dict[str, list[dict]]:
    """An `offline.py` results file's runs by `DATASET/LABEL`, in seed order; with `upto`,
    each library's curve cut after that step (runs stopped at different steps compare there)."""
    try:
        runs = json.loads(path.read_text())["runs"]
    except (OSError, ValueError, KeyError) as error:
        raise SystemExit(f"{path}: not an offline.py results file ({error})") from error
    found: dict[str, list[dict]] = defaultdict(list)
    for key in sorted(runs, key=lambda k: (k.rsplit("/", 1)[0], int(k.rsplit("/", 1)[1]))):
        run = runs[key]
        if upto is not None:
            run = {
                library: part | {"curve": [p for p in part["curve"] if p["step"] <= upto]}
                if isinstance(part, dict) and "curve" in part
                else part
                for library, part in run.items()
            }
        found[key.rsplit("/", 1)[0]].append(run)
    return found


def fallen(runs: list[dict], below: float, library: str = "o2o") -> str:
    """How many of the runs' evaluations after the first score below `below`, of how many."""
    later = [p["score"] for r in runs for p in r[library]["curve"][1:]]
    return f"{sum(s < below for s in later)} of {len(later)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variants", nargs="+", type=Path, help="offline.py results (.json)")
    parser.add_argument("--baseline", type=Path, required=True, help="the parity study (.json)")
    parser.add_argument("--name", required=True, help="writes benchmarks/results/NAME.{json,md}")
    parser.add_argument("--fallen", type=float, default=5.0, help="a fallen evaluation's score")
    parser.add_argument(
        "--upto",
        type=int,
        default=None,
        help="score every run on its evaluations up to this step (runs stopped short)",
    )
    args = parser.parse_args()

    baseline = groups(args.baseline, args.upto)
    rows, table, bases = [], [], []
    for path in args.variants:
        for key, runs in groups(path, args.upto).items():
            dataset, label = key.split("/", 1)
            base_key = f"{dataset}/{label.split(' (')[0]}"
            if base_key not in baseline or path.resolve() == args.baseline.resolve():
                continue  # not a variant of an agent the baseline holds
            base = baseline[base_key]
            bases += [base_key] if base_key not in bases else []
            o2o = scores(runs, "o2o")
            row = {"variant": f"{key} ({path.stem})", "seeds": len(runs)}
            row |= {"score": stats.aggregate(o2o), "fallen": fallen(runs, args.fallen)}
            row["vs_o2o"] = str(stats.iqm_difference(o2o, scores(base, "o2o")))
            if all("d3rlpy" in r for r in base):
                row["vs_d3rlpy"] = str(stats.iqm_difference(o2o, scores(base, "d3rlpy")))
            rows.append(row)
            table.append({"file": path.name, "group": key, "scores": o2o} | row)
    for key in reversed(bases):  # the baselines first
        runs = baseline[key]
        for library in ("d3rlpy", "o2o") if all("d3rlpy" in r for r in runs) else ("o2o",):
            row = {"variant": f"{key} ({args.baseline.stem}, {library})", "seeds": len(runs)}
            row |= {"score": stats.aggregate(scores(runs, library))}
            rows.insert(0, row | {"fallen": fallen(runs, args.fallen, library)})
    if not table:
        raise SystemExit(f"no variant of an agent in {args.baseline} was found in the inputs")

    command = shlex.join(["python", "benchmarks/ablations.py", *sys.argv[1:]])
    columns = {
        "variant": "variant (results file)",
        "seeds": "seeds",
        "score": "o2o score",
        "fallen": f"evaluations below {args.fallen:g}",
        "vs_o2o": "− baseline o2o (IQM, 95% CI)",
        "vs_d3rlpy": "− baseline d3rlpy (IQM, 95% CI)",
    }
    stem = RESULTS / args.name
    stem.with_suffix(".json").write_text(json.dumps({"command": command, "rows": table}, indent=1))
    text = (
        f"# Ablations against {args.baseline.name}\n\n`{command}`\n\n"
        f"Scores: D4RL-normalised. {stats.note(run_scores=True)} Budgets, seeds and CPU-hours: "
        "each results file's own heading."
        + (f" Every run is scored on its evaluations up to step {args.upto}." if args.upto else "")
        + "\n\n"
        f"{markdown_table(rows, columns)}\n"
    )
    stem.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
