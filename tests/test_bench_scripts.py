"""benchmarks/offline.py (a run's curve with training seconds and held-out Q bias, the time each
library took to reach the data's score, collapses, published numbers) and switch_check.py's
table."""

import json
from types import SimpleNamespace

import pytest

from o2o.sweep import Sweep


@pytest.fixture
def offline(bench_script):
    return bench_script("offline")


def test_o2o_curve_counts_training_seconds_interval_by_interval(offline, tmp_path):
    records = [
        {"step": 0, "normalized_score": 1.0, "return_mean": 20.0, "updates_per_s": 0.0},
        {"step": 100, "normalized_score": 5.0, "return_mean": 90.0, "updates_per_s": 10.0},
        {"step": 300, "normalized_score": 9.0, "return_mean": 150.0, "updates_per_s": 50.0},
    ]
    for i, r in enumerate(records):
        r |= {"phase": "offline", "holdout_q_bias": float(i), "wall_s": 99.0 * i}
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = {"offline_final_score": 9.0, "offline_final_return": 150.0, "offline_wall_s": 5.0}
    (tmp_path / "summary.json").write_text(json.dumps(summary))

    curve = offline.o2o_result(SimpleNamespace(out=tmp_path))["curve"]
    assert [p["seconds"] for p in curve] == [0.0, 10.0, 14.0]  # 100 at 10/s, then 200 at 50/s
    assert [p["holdout_q_bias"] for p in curve] == [0.0, 1.0, 2.0]


def test_time_to_reach_the_data_score(offline):
    def run(points):
        return {"o2o": {"curve": [{"score": s, "seconds": t} for s, t in points]}}

    runs = [
        run([(1, 0), (40, 3600), (20, 7200)]),
        run([(1, 0), (10, 3600), (35, 7200)]),
        run([(1, 0), (5, 3600), (6, 7200)]),  # never
    ]
    assert offline.time_to_reach(runs, "o2o", 32.0) == "1.50 h, 2/3 seeds"
    assert offline.time_to_reach(runs[2:], "o2o", 32.0) == "0/1 seeds"
    old = {"o2o": {"curve": [{"score": 50.0}]}}  # results from before curves had times
    assert offline.time_to_reach([old], "o2o", 32.0) == "-"


def test_collapse_is_a_run_score_below_half_the_best(offline):
    def run(scores):
        return {"o2o": {"curve": [{"score": s} for s in scores]}}

    runs = [run([1, 80, 30, 35, 39]), run([1, 80, 30, 40, 50]), run([1, 2, 3, 2, 1])]
    assert offline.collapsed(runs, "o2o") == "1/3"  # 34.7 < 40; 40.0 is not; 2 < 1.5 is not


def test_published_numbers_name_real_tasks_and_agents(bench_script):
    published = bench_script("published")

    from o2o.agents import AGENTS
    from o2o.envs.tasks import parse_task

    for table in published._tables():
        for kind in ("offline", "finetune"):
            for task, values in table.get(kind, {}).items():
                assert parse_task(task)[1] is not None, task  # a dataset, not a bare task
                assert set(values) <= set(AGENTS), (task, values)
    value, source = published.published("finetune", "scene-play-singletask-task2", "fql")
    assert value == "82 ± 11 → 100 ± 1" and "FQL paper" in source
    assert published.published("offline", "hopper-medium", "iql") is None


def test_switch_check_table_states_the_correlation_with_its_interval(
    tmp_path, monkeypatch, bench_script
):
    module = bench_script("switch_check")
    monkeypatch.setattr(module, "RESULTS", tmp_path)
    risks = ["low", "low", "medium", "high", "high", "medium"]
    dips = [0.0, 2.0, 10.0, 40.0, 30.0, 5.0]
    rows = [
        {"run": f"r{i}", "algo": "cql", "risk": risk, "raised": "-", "switch_score": 30.0}
        | {"dip": dip, "final": 50.0}
        for i, (risk, dip) in enumerate(zip(risks, dips, strict=True))
    ]
    fallen = rows[0] | {"run": "fallen", "risk": "high", "switch_score": 1.0, "dip": 0.5}
    module.write([*rows, fallen], None)
    summary = json.loads((tmp_path / "switch_check.json").read_text())["summary"]
    rho, standing = summary["spearman_risk_vs_dip"], summary["spearman_risk_vs_dip_standing"]
    assert rho["low"] <= rho["value"] <= rho["high"] and rho["value"] < standing["value"]
    assert summary["standing_runs"] == 6 and standing["value"] > 0.8  # the fallen run left out
    assert summary["mean_dip_by_risk"] == {"low": 1.0, "medium": 7.5, "high": 70.5 / 3}
    text = (tmp_path / "switch_check.md").read_text()
    assert f"with the measured dip {rho['value']:.2f} [" in text
    assert f"the rank correlation is {standing['value']:.2f} [" in text


def test_no_train_trains_nothing_and_marks_unfinished_runs(offline, tmp_path, monkeypatch):
    spec = tmp_path / "gpu.toml"
    spec.write_text(
        f'out = "{tmp_path / "runs"}"\ntasks = ["hopper-medium"]\nalgos = ["bc"]\n'
        "seeds = [0, 1]\n[train]\noffline_steps = 100\nonline_steps = 0\neval_interval = 50\n"
    )
    monkeypatch.setattr(offline, "RESULTS", tmp_path)
    monkeypatch.setattr(offline, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(offline, "host_peaks", lambda path: [1.0])
    monkeypatch.setattr(offline, "data_score", lambda dataset, size: 30.0)

    def trained(unit):
        raise AssertionError(f"--no-train trained {unit.label}")

    monkeypatch.setattr(offline.o2o_sweep, "run_unit", trained)
    monkeypatch.setattr("sys.argv", ["offline.py", str(spec), "--no-train"])
    offline.main()  # neither run has begun: nothing trained, no table
    assert not (tmp_path / "offline_gpu.md").exists()

    for seed, device in enumerate(["NVIDIA H200", "cpu"]):  # stopped at 50 of 100 updates
        records = [
            {"step": step, "phase": "offline", "normalized_score": score, "return_mean": 1.0}
            | {"updates_per_s": 10.0, "wall_s": step / 10, "device": device}
            for step, score in [(0, 1.0), (50, 20.0 + seed)]
        ]
        run = Sweep.load(spec).run_dirs()[seed]
        run.mkdir(parents=True)
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    offline.main()
    table = (tmp_path / "offline_gpu.md").read_text()
    assert "| bc (unfinished: 50) |" in table
    assert "Trained on NVIDIA H200" in table
