"""`o2o switch-check` against the dips measured after the switch (issue 23).

    python benchmarks/switch_check.py --runs runs/bench_finetune/hopper-medium-*-seed*

For each finished fine-tuning run (`benchmarks/finetune.py`): the risk `o2o switch-check`
predicts from the run's offline checkpoint alone, and the dip measured online (the fall of
the normalised score below its value at the switch, `o2o.diagnostics.finetune`). Checks are
cached per run in RUN/switch_check.json; the table says whether the predicted order matches the
measured one (the rank correlation of the risk level with the dip, and the mean dip per level),
whatever it shows.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from fqe import fmt_correlation, spearman

from o2o.cli import switch_check_command
from o2o.diagnostics.switch import SWITCH_FILE
from o2o.logging import read_json
from o2o.report.tables import markdown_table
from o2o.train.pipeline import load_config

RESULTS = Path(__file__).resolve().parent / "results"
LEVELS = {"low": 0, "medium": 1, "high": 2}
STANDING = 5.0  # a score at the switch below it is a fallen policy, with no room to dip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", type=Path, required=True)
    args = parser.parse_args()
    rows = []
    for run in sorted(args.runs):
        summary_path = run / "summary.json"
        if not summary_path.exists() or load_config(run).offline_steps == 0:
            continue  # unfinished, or no switch to check (RLPD)
        summary = read_json(summary_path)
        if summary.get("dip") is None:
            continue
        path = run / SWITCH_FILE
        check = read_json(path) if path.exists() else switch_check_command([str(run)])
        values = {c["name"]: c["value"] for c in check["checks"]}
        rows.append(
            {
                "run": run.name,
                "algo": load_config(run).algo,
                "risk": check["risk"],
                "raised": ", ".join(c["name"] for c in check["checks"] if c["raised"]) or "-",
                **values,
                "switch_score": summary["offline_score"],
                "dip": summary["dip"],
                "final": summary["final_online_score"],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    if rows:
        write(rows, args)


def write(rows: list[dict], args: argparse.Namespace) -> None:
    levels = [LEVELS[r["risk"]] for r in rows]
    dips = [r["dip"] for r in rows]
    by_level = {
        level: float(np.mean([r["dip"] for r in rows if r["risk"] == level]))
        for level in LEVELS
        if any(r["risk"] == level for r in rows)
    }
    standing = [
        (lv, r["dip"]) for lv, r in zip(levels, rows, strict=True) if r["switch_score"] >= STANDING
    ]
    summary = {
        "runs": len(rows),
        "spearman_risk_vs_dip": spearman(levels, dips) if len(set(levels)) > 1 else None,
        "mean_dip_by_risk": by_level,
        "standing_runs": len(standing),
        "spearman_risk_vs_dip_standing": (
            spearman(*zip(*standing, strict=True)) if len({lv for lv, _ in standing}) > 1 else None
        ),
    }
    command = "python benchmarks/switch_check.py --runs " + " ".join(
        str(Path("runs/bench_finetune") / r["run"]) for r in rows
    )
    stem = RESULTS / "switch_check"
    stem.with_suffix(".json").write_text(
        json.dumps({"command": command, "summary": summary, "rows": rows}, indent=1)
    )

    def fmt(v):
        return "-" if v is None else f"{v:+.2f}" if isinstance(v, float) else v

    table = [{k: fmt(v) for k, v in r.items()} for r in rows]
    columns = {
        "run": "run",
        "risk": "predicted risk",
        "raised": "checks raised",
        "holdout_q_bias": "held-out Q bias (rel.)",
        "rollout_q_bias": "rollout Q bias (rel.)",
        "q_vs_fqe": "Q vs FQE (rel.)",
        "action_distance": "action distance",
        "switch_score": "score at switch",
        "dip": "measured dip",
        "final": "final online score",
    }
    rho = summary["spearman_risk_vs_dip"]
    text = [
        "# `o2o switch-check` against the measured dip",
        "",
        f"`{command}`",
        "",
        "Risk predicted from each run's offline checkpoint before any online step "
        "(o2o/diagnostics/switch.py); dip measured after the switch (normalised-score points "
        "below the score at the switch). Fine-tuning runs: benchmarks/finetune.py (their "
        "budget, seeds and networks are in its results file).",
        "",
        f"Over {len(rows)} runs: rank correlation (Spearman, 95% bootstrap interval over the "
        "runs) of the predicted risk with the measured dip "
        f"{'n/a (one risk level)' if rho is None else fmt_correlation(rho)}; mean dip by predicted "
        "risk: " + ", ".join(f"{k} {v:.1f}" for k, v in by_level.items()) + ". A policy "
        f"already fallen at the switch (score below {STANDING:g}) has no room to dip; over the "
        f"{summary['standing_runs']} runs standing at the switch the rank correlation is "
        + (
            "n/a (one risk level)"
            if summary["spearman_risk_vs_dip_standing"] is None
            else fmt_correlation(summary["spearman_risk_vs_dip_standing"])
        )
        + ".",
        "",
        markdown_table(table, columns),
        "",
    ]
    stem.with_suffix(".md").write_text("\n".join(text))


if __name__ == "__main__":
    main()
