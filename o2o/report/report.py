"""`o2o report RUN_DIR...`: score and Q-bias over training, and the fine-tuning table, for any
set of runs, as a self-contained HTML page (plots embedded) and Markdown (plots beside it).

Runs of the same algorithm on the same task are one curve: the IQM over seeds with its 95%
stratified-bootstrap interval shaded (`o2o.report.stats`; without the `report` extra, the mean
and the range between the lowest and highest seed). Table cells aggregate seeds the same way.
The x axis puts the switch at 0: offline updates count up to it from the left, online
environment steps from it to the right, so a run with no offline phase (RLPD) lines up with the
fine-tuning of the others.
"""

from __future__ import annotations

import base64
import html
import io
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from o2o.diagnostics.finetune import finetune_metrics
from o2o.logging import read_episodes, read_json, read_metrics
from o2o.report import stats
from o2o.report.tables import markdown_table

PANELS = {
    "normalized_score": "normalised score",
    "q_bias": "Q - MC return (evaluation rollouts)",
    "holdout_q_bias": "Q - MC return (held-out dataset episodes)",
}
COLUMNS = {
    "run": "runs",
    "seeds": "seeds",
    "offline_score": "score at switch (offline: final)",
    "dip": "dip",
    "recovery_steps": "steps to recover",
    "final_online_score": "final online",
    "best_online_score": "best online",
    "regret": "regret",
    "q_bias_at_switch": "Q bias at switch",
    "holdout_q_bias_at_switch": "held-out Q bias at switch",
    "diverged": "diverged (score not a number)",
}


def load_run(run_dir: Path) -> dict[str, Any]:
    """A run's config, evaluation records and fine-tuning metrics, with a clear error for a
    directory that is not a run."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists():
        raise FileNotFoundError(
            f"{run_dir}: not a run directory (no config.json); pass directories made by "
            "`o2o train` or `o2o demo`"
        )
    records = read_metrics(run_dir)
    if not records:
        raise ValueError(f"{run_dir}: metrics.jsonl has no evaluations yet; run it longer")
    config = read_json(run_dir / "config.json")
    offline_steps = max((r["step"] for r in records if r["phase"] == "offline"), default=0)
    for r in records:  # the switch at x = 0
        r["x"] = r["step"] - offline_steps if r["phase"] == "offline" else r["env_steps"]
    metrics = finetune_metrics(records, read_episodes(run_dir))
    if not metrics and offline_steps:  # an offline-only run: its final offline score
        metrics["offline_score"] = records[-1]["normalized_score"]
    if not all(_finite(r.get("normalized_score")) for r in records):
        metrics["diverged"] = True  # counted in the table; its curves stop at the NaN
    return {"dir": run_dir, "config": config, "records": records, "metrics": metrics}


def _finite(value: Any) -> bool:
    return value is not None and bool(np.isfinite(value))


def _groups(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    tasks = {run["config"]["task"] for run in runs}
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        name = run["config"]["algo"]
        groups[name if len(tasks) == 1 else f"{name} ({run['config']['task']})"].append(run)
    return dict(groups)


def _figure(groups: dict[str, list[dict[str, Any]]], key: str, ylabel: str):
    curves = {
        label: [{r["x"]: r.get(key) for r in run["records"] if key in r} for run in runs]
        for label, runs in groups.items()
    }
    fig = curves_figure(curves, ylabel, zero_line=key != "normalized_score")
    fig.axes[0].axvline(0, color="grey", lw=0.8, ls="--")
    fig.axes[0].set_xlabel("offline updates (< 0) | online environment steps (> 0)")
    return fig


def curves_figure(curves: dict[str, list[dict[float, float]]], ylabel: str, zero_line=False):
    """One line per label over its runs' curves (x -> value), with its band (`stats.band`)."""
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    for label, runs in curves.items():
        xs, centre, (low, high) = stats.band(runs)
        if not xs or np.isnan(centre).all():
            continue
        (line,) = ax.plot(xs, centre, marker="o", ms=3, label=f"{label} (n={len(runs)})")
        if len(runs) > 1:
            ax.fill_between(xs, low, high, color=line.get_color(), alpha=0.2)
    if zero_line:
        ax.axhline(0, color="black", lw=0.8)
    how = "IQM, 95% CI" if stats.available() else "mean, range"
    ax.set(xlabel="updates", ylabel=f"{ylabel} ({how})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _table(groups: dict[str, list[dict[str, Any]]]) -> tuple[list[dict[str, Any]], dict]:
    """One row per group, each metric over seeds (`stats.aggregate`), and the columns that have
    values."""
    rows = []
    for label, runs in groups.items():
        row: dict[str, Any] = {"run": label, "seeds": len(runs)}
        for key in COLUMNS:
            values = [run["metrics"].get(key) for run in runs]
            values = [v for v in values if v is not None]
            if key in ("run", "seeds", "diverged") or not values:
                continue
            row[key] = stats.aggregate(values) if len(runs) > 1 else float(values[0])
            if key == "recovery_steps" and len(values) < len(runs):
                row[key] = f"{row[key]} ({len(runs) - len(values)} never)"
        diverged = sum(bool(run["metrics"].get("diverged")) for run in runs)
        if diverged:
            row["diverged"] = f"{diverged} of {len(runs)}"
        rows.append(row)
    return rows, {k: v for k, v in COLUMNS.items() if any(k in row for row in rows)}


def fine_tuning_table(run_dirs: list[Path]) -> str:
    """The report's table (Markdown) for a set of runs."""
    return markdown_table(*_table(_groups([load_run(Path(d)) for d in run_dirs])))


def render_report(run_dirs: list[Path], out_dir: Path, title: str = "o2o report") -> Path:
    """Write OUT_DIR/report.html (self-contained) and OUT_DIR/report.md (with PNGs beside it);
    returns the HTML path."""
    runs = [load_run(Path(d)) for d in run_dirs]
    groups = _groups(runs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    images: list[tuple[str, str, bytes]] = []
    for key, ylabel in PANELS.items():
        if not any(_finite(r.get(key)) for run in runs for r in run["records"]):
            continue  # e.g. Q bias of BC, which has no critic
        fig = _figure(groups, key, ylabel)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110)
        plt.close(fig)
        images.append((key, ylabel, buffer.getvalue()))
    rows, columns = _table(groups)
    table = markdown_table(rows, columns)
    sources = "\n".join(f"- `{run['dir']}`" for run in runs)
    explain = (
        "Dip: the largest fall below the score at the switch in the first quarter of the "
        "online phase; regret: over the online training episodes, mean of 1 - success (Cal-QL's; "
        "dense tasks: of 1 - clip(score, 0, 100) / 100); Q bias: "
        "mean Q(s, a) minus the discounted Monte-Carlo return (negative: pessimistic). "
        + stats.note()
    )

    md = [f"# {title}", "", table, explain, ""]
    for key, ylabel, png in images:
        (out_dir / f"{key}.png").write_bytes(png)
        md += [f"## {ylabel}", "", f"![{ylabel}]({key}.png)", ""]
    md += ["## Runs", "", sources, ""]
    (out_dir / "report.md").write_text("\n".join(md))

    body = [f"<h1>{html.escape(title)}</h1>", _html_table(rows, columns)]
    body.append(f"<p>{html.escape(explain)}</p>")
    for _, ylabel, png in images:
        data = base64.b64encode(png).decode()
        body.append(f"<h2>{html.escape(ylabel)}</h2><img src='data:image/png;base64,{data}'>")
    items = "".join(f"<li><code>{html.escape(str(run['dir']))}</code></li>" for run in runs)
    body.append(f"<h2>Runs</h2><ul>{items}</ul>")
    style = (
        "body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;"
        "text-align:right}img{max-width:100%}"
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>"
    )
    path = out_dir / "report.html"
    path.write_text(page)
    return path


def _html_table(rows: list[dict[str, Any]], columns: dict[str, str]) -> str:
    def cell(value: Any) -> str:
        if value is None:
            return "-"
        return f"{value:.2f}" if isinstance(value, float) else html.escape(str(value))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in columns.values())
    lines = [
        "<tr>" + "".join(f"<td>{cell(row.get(k))}</td>" for k in columns) + "</tr>" for row in rows
    ]
    return f"<table><tr>{head}</tr>{''.join(lines)}</table>"
