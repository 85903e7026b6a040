"""benchmarks/ablations.py: variants matched to their baseline agent, differences as stats."""

import json
import sys

import pytest


def _results(path, groups):
    """An offline.py results file: {DATASET/LABEL: {library: [score per run]}}, 4 evaluations."""
    runs = {}
    for group, libraries in groups.items():
        for seed in range(len(next(iter(libraries.values())))):
            runs[f"{group}/{seed}"] = {
                library: {"curve": [{"step": 0, "score": 1.0}] + [{"score": s[seed]}] * 3}
                for library, s in libraries.items()
            }
    path.write_text(json.dumps({"command": "python benchmarks/offline.py", "runs": runs}))
    return path


def test_variants_against_their_baseline_agent(tmp_path, monkeypatch, bench_script):
    pytest.importorskip("rliable")
    module = bench_script("ablations")
    from o2o.report import stats

    monkeypatch.setattr(module, "RESULTS", tmp_path)
    baseline = _results(
        tmp_path / "parity.json",
        {
            "hopper-medium/awac": {"o2o": [1.0, 2, 3, 40], "d3rlpy": [50.0, 60, 2, 70]},
            "hopper-medium/iql": {"o2o": [30.0, 31, 32, 33], "d3rlpy": [30.0, 30, 30, 30]},
        },
    )
    variant = _results(
        tmp_path / "parity-awac-x.json",
        {
            "hopper-medium/awac (x=1)": {"o2o": [20.0, 25, 3, 4], "d3rlpy": [50.0, 60, 2, 70]},
            "hopper-medium/td3bc (x=1)": {"o2o": [9.0, 9, 9, 9]},  # no baseline: left out
        },
    )
    rerun = _results(  # no settings: the agent as the code stood when these runs ran
        tmp_path / "parity-new-code.json", {"hopper-medium/awac": {"o2o": [30.0, 31, 32, 33]}}
    )
    argv = ["ablations.py", str(variant), str(rerun), "--baseline", str(baseline), "--name", "out"]
    monkeypatch.setattr(sys, "argv", argv)
    module.main()

    rows = json.loads((tmp_path / "out.json").read_text())["rows"]
    assert [(row["file"], row["group"]) for row in rows] == [
        ("parity-awac-x.json", "hopper-medium/awac (x=1)"),
        ("parity-new-code.json", "hopper-medium/awac"),
    ]
    assert rows[1]["vs_o2o"] == str(stats.iqm_difference([30, 31, 32, 33], [1, 2, 3, 40]))
    assert rows[0]["vs_o2o"] == str(stats.iqm_difference([20, 25, 3, 4], [1, 2, 3, 40]))
    assert rows[0]["vs_d3rlpy"] == str(stats.iqm_difference([20, 25, 3, 4], [50, 60, 2, 70]))
    assert rows[0]["fallen"] == "6 of 12"  # seeds 2 and 3 score 3 and 4 at each of 3 evaluations
    table = (tmp_path / "out.md").read_text()
    assert "hopper-medium/awac (parity, d3rlpy)" in table and "iql" not in table


def test_no_variant_is_an_error(tmp_path, monkeypatch, bench_script):
    module = bench_script("ablations")
    baseline = _results(tmp_path / "parity.json", {"hopper-medium/iql": {"o2o": [1.0, 2]}})
    argv = ["ablations.py", str(baseline), "--baseline", str(baseline), "--name", "out"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit, match="no variant"):
        module.main()


def test_upto_scores_runs_stopped_at_different_steps_at_one_step(
    tmp_path, monkeypatch, bench_script
):
    """--upto S cuts every curve after step S: a variant that ran further is not scored on
    evaluations the baseline never reached."""
    pytest.importorskip("rliable")
    module = bench_script("ablations")
    monkeypatch.setattr(module, "RESULTS", tmp_path)

    def results(path, label, curves):
        runs = {
            f"hopper-medium/{label}/{seed}": {
                "o2o": {"curve": [{"step": 10 * i, "score": s} for i, s in enumerate(c)]}
            }
            for seed, c in enumerate(curves)
        }
        path.write_text(json.dumps({"command": "offline.py", "runs": runs}))
        return path

    baseline = results(tmp_path / "base.json", "rebrac", [[1.0, 2, 3]] * 3)
    variant = results(tmp_path / "v.json", "rebrac (x=1)", [[1.0, 2, 3, 90, 90, 90]] * 3)
    argv = ["ablations.py", str(variant), "--baseline", str(baseline), "--name", "out"]
    monkeypatch.setattr(sys, "argv", [*argv, "--upto", "20"])
    module.main()
    row = json.loads((tmp_path / "out.json").read_text())["rows"][0]
    assert row["scores"] == [2.0, 2.0, 2.0]  # the mean of steps 0, 10 and 20, not 90
    assert "up to step 20" in (tmp_path / "out.md").read_text()
