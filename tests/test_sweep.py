"""`o2o sweep`: the sweep file's checks, a local sweep that skips what is finished and resumes
what is not, retries, and the same sweep on a local Ray instance."""

import importlib.util

import pytest
from agent_helpers import hopper_dataset

import o2o.sweep
from o2o.cli import main
from o2o.report.report import fine_tuning_table
from o2o.sweep import Sweep, sweep


def spec_file(tmp_path, name="study", algos=("td3bc",), seeds=(0, 1), **extra) -> str:
    """A tiny sweep on random Hopper data, 20 offline updates per run."""
    lines = [
        f'out = "{tmp_path / name}"',
        'tasks = ["hopper"]',
        f"algos = {list(algos)}".replace("'", '"'),
        f"seeds = {list(seeds)}",
        *extra.pop("top", []),
        "[train]",
        f'dataset = "{hopper_dataset(tmp_path)}"',
        "offline_steps = 20",
        "online_steps = 0",
        "eval_interval = 20",
        "eval_episodes = 2",
        "[agent]",
        "hidden_dims = [8, 8]",
        "batch_size = 8",
        *extra.pop("agent", []),
    ]
    path = tmp_path / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    "change, message",
    [
        ({"top": ["budget = 3"]}, "unknown keys \\['budget'\\]"),
        ({"top": ["vmap_seeds = true", "seeds = []"]}, "Cannot overwrite|`seeds` must be"),
        ({"agent": ["expectil = 0.8"]}, "expectil"),
        ({"agent": ["[agent.sac]", "utd_ratio = 2"]}, "agent.sac"),
        ({"algos": ("td3bc", "iql"), "agent": ["actor_bc = 1.0"]}, "not iql's"),
        ({"agent": ["[train.sac]", "offline_steps = 5"]}, "train.sac"),
        ({"top": ['run_name = "{task}-{algo}"']}, "several runs one directory"),
        ({"top": ['run_name = "{algo}-{width}-{seed}"']}, "no field 'width'"),
    ],
)
def test_bad_sweep_files_are_refused_naming_the_file(tmp_path, change, message):
    path = spec_file(tmp_path, **change)
    with pytest.raises(ValueError, match=message) as error:
        Sweep.load(path)
    assert str(path) in str(error.value)


def test_run_names_and_settings_per_algorithm(tmp_path):
    """`run_name` over the run's fields and the agent fields set; [train.ALGO] for one
    algorithm's runs."""
    path = spec_file(
        tmp_path,
        algos=("td3bc", "iql"),
        top=['run_name = "{task}-{algo}{overrides}-{offline_steps}-s{seed}"'],
        agent=[
            "[agent.iql]",
            "expectile = 0.9",
            'decay_steps = "None"',  # TOML has no null: the CLI's spelling
            "[train.iql]",
            "offline_steps = 10",
        ],
    )
    spec = Sweep.load(path)
    names = [d.name for d in spec.run_dirs()]
    assert names == [
        "hopper-td3bc-hidden_dims=8x8-batch_size=8-20-s0",
        "hopper-td3bc-hidden_dims=8x8-batch_size=8-20-s1",
        "hopper-iql-hidden_dims=8x8-batch_size=8-expectile=0.9-decay_steps=None-10-s0",
        "hopper-iql-hidden_dims=8x8-batch_size=8-expectile=0.9-decay_steps=None-10-s1",
    ]
    iql = [c for u in spec.units() if u.algo == "iql" for c in u.configs()]
    assert [(c.offline_steps, c.agent.expectile) for c in iql] == [(10, 0.9), (10, 0.9)]
    assert [c.agent.decay_steps for c in iql] == [None, None]


def test_local_sweep_skips_finished_runs_and_retries(tmp_path, monkeypatch):
    path = spec_file(tmp_path)
    main(["sweep", str(path), "--workers", "1"])
    spec = Sweep.load(path)
    dirs = spec.run_dirs()
    assert len(dirs) == 2 and all((d / "summary.json").exists() for d in dirs)
    assert (tmp_path / "study" / "report" / "report.html").exists()
    assert spec.units() == []  # all finished
    # Finished runs are not reused under other settings.
    other = spec_file(tmp_path, name="other", agent=["discount = 0.9"])
    other.write_text(other.read_text().replace(str(tmp_path / "other"), str(tmp_path / "study")))
    with pytest.raises(ValueError, match="discount"):
        Sweep.load(other).units()
    # A run lost (killed before its summary): only it runs again, the others stay untouched.
    lost = tmp_path / "study" / "hopper" / "td3bc" / "seed1"
    (lost / "summary.json").unlink()
    kept = {d: (d / "metrics.jsonl").read_text() for d in dirs if d != lost}
    assert [(u.algo, u.seeds) for u in spec.units()] == [("td3bc", (1,))]
    calls = []
    real = o2o.sweep.run_unit

    def flaky(unit):  # fails once, then works: retried, not reported
        calls.append(unit)
        if len(calls) == 1:
            raise RuntimeError("a transient failure")
        return real(unit)

    monkeypatch.setattr(o2o.sweep, "run_unit", flaky)
    _, failures = sweep(path, workers=1)
    assert failures == {} and len(calls) == 2 and (lost / "summary.json").exists()
    assert all((d / "metrics.jsonl").read_text() == text for d, text in kept.items())
    # A unit that always fails is reported, with its error, and the exit status says so.
    (lost / "summary.json").unlink()
    monkeypatch.setattr(o2o.sweep, "run_unit", lambda unit: 1 / 0)
    with pytest.raises(SystemExit, match="1 unit"):
        main(["sweep", str(path)])
    _, failures = sweep(path, workers=1)
    assert [u.seeds for u in failures] == [(1,)] and "ZeroDivisionError" in failures.popitem()[1]


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray is not installed")
def test_ray_backend_gives_the_local_table(tmp_path):
    """The same sweep on a new local Ray instance and in this process: the same table."""
    local, ray_ = (spec_file(tmp_path, name, seeds=(0,)) for name in ("local", "ray"))
    sweep(local, workers=1)
    report, failures = sweep(ray_, ray_address="local", cpus_per_run=1)
    assert failures == {} and report is not None
    tables = [fine_tuning_table(Sweep.load(p).run_dirs()) for p in (local, ray_)]
    assert tables[0] == tables[1]
