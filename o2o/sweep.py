"""`o2o sweep SPEC.toml`: a study (tasks x algorithms x seeds, one budget, overrides) run on
this machine by a pool of worker processes, or on a Ray cluster, then aggregated.

A sweep file:

    out = "runs/sweeps/offline-small"   # run directories: OUT/TASK/ALGO/seedS
    tasks = ["hopper-medium"]
    algos = ["td3bc", "iql"]
    seeds = [0, 1]
    vmap_seeds = true                   # the seeds of one (task, algo) in one process, their
                                        # offline updates vmapped together (`--seeds`)
    [train]                             # TrainConfig fields for every run (`o2o train`'s flags)...
    offline_steps = 300
    online_steps = 0
    [train.iql]                         # ...and for one algorithm's runs
    data_mix = "proportional"
    [agent]                             # agent fields for every algorithm...
    hidden_dims = [64, 64]
    [agent.iql]                         # ...and for one of them
    expectile = 0.8
    decay_steps = "None"                # None where a field admits it (TOML has no null)

`run_name` (optional) names each run's directory under OUT, a Python format string over the
run's TrainConfig fields (`{task}`, `{algo}`, `{seed}`, `{offline_steps}`...) and `{overrides}`
(the agent fields the sweep sets for that algorithm, as `-FIELD=VALUE` each); the default is
"{task}/{algo}/seed{seed}". The benchmarks' sweeps (benchmarks/sweeps/) keep their own names.

Every run starts from its algorithm's reference recipe for its task (`task_preset`). A unit of
work is one (task, algo) and its unfinished seeds (or one seed, with `vmap_seeds = false`).
Finished runs are skipped (refused, naming the fields, when they were made with other settings),
unfinished ones resume from their checkpoints, a failed unit is
retried once and, if it fails again, reported at the end (exit status 1) with its error; the
others go on. The sweep ends with the aggregated table (IQM over seeds, bootstrap intervals)
and the HTML report of every finished run (OUT/report).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import multiprocessing
import os
import tomllib
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from o2o.agents import get_agent
from o2o.envs.tasks import parse_task
from o2o.logging import console, read_json

SPEC_KEYS = {"out", "run_name", "tasks", "algos", "seeds", "vmap_seeds", "train", "agent"}
RUN_NAME = "{task}/{algo}/seed{seed}"
FIXED_FIELDS = {"algo", "task", "seed", "out", "agent", "preset"}  # set by the sweep itself
RETRIES = 1


@dataclasses.dataclass(frozen=True)
class Unit:
    """One unit of work: `algo` on `task` for `seeds`, each in OUT/`run_name`. Plain data, so
    that it travels to worker processes and Ray workers."""

    task: str
    algo: str
    seeds: tuple[int, ...]
    out: str
    train: tuple[tuple[str, Any], ...]  # TrainConfig fields
    agent: tuple[tuple[str, Any], ...]  # agent fields, in the sweep's order
    run_name: str = RUN_NAME

    @property
    def label(self) -> str:
        return f"{self.task} {self.algo} seeds {' '.join(map(str, self.seeds))}"

    @property
    def overrides(self) -> list[str]:
        """The agent fields this unit sets, as FIELD=VALUE (a tuple's items joined by x)."""
        return [
            f"{k}={'x'.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in self.agent
        ]

    def configs(self) -> list:
        """The TrainConfig of each seed, its `out` the run's directory."""
        from o2o.train.pipeline import default_config

        base = default_config(self.algo, task=self.task, **dict(self.train))
        base = dataclasses.replace(base, agent=dataclasses.replace(base.agent, **dict(self.agent)))
        fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
        overrides = "".join(f"-{o}" for o in self.overrides)
        return [
            dataclasses.replace(
                base,
                seed=seed,
                out=Path(self.out)
                / self.run_name.format(**fields | {"seed": seed, "overrides": overrides}),
            )
            for seed in self.seeds
        ]


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A parsed, validated sweep file."""

    path: Path
    out: Path
    tasks: tuple[str, ...]
    algos: tuple[str, ...]
    seeds: tuple[int, ...]
    vmap_seeds: bool
    train: dict[str, Any]  # fields for every run
    train_by_algo: dict[str, dict[str, Any]]
    agent: dict[str, Any]  # fields for every algorithm
    agent_by_algo: dict[str, dict[str, Any]]
    run_name: str = RUN_NAME

    @classmethod
    def load(cls, path: str | Path) -> Sweep:
        """Read and check a sweep file: every error names the file, the key and the fix."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such sweep file")
        try:
            spec = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as error:
            raise ValueError(f"{path}: not valid TOML ({error})") from None
        return cls.from_spec(spec, path)

    @classmethod
    def from_spec(cls, spec: dict[str, Any], path: Path) -> Sweep:
        """A sweep from a sweep file's contents (a benchmark's flags build one); errors name
        `path`, the file or the command the spec came from."""
        unknown = set(spec) - SPEC_KEYS
        if unknown:
            raise ValueError(
                f"{path}: unknown keys {sorted(unknown)}; a sweep file has {sorted(SPEC_KEYS)}"
            )
        for key in ("tasks", "algos", "seeds"):
            if not isinstance(spec.get(key), list) or not spec[key]:
                raise ValueError(f"{path}: `{key}` must be a non-empty list")
        if len(set(spec["seeds"])) < len(spec["seeds"]) or not all(
            isinstance(s, int) and s >= 0 for s in spec["seeds"]
        ):
            raise ValueError(f"{path}: `seeds` must be distinct non-negative integers")
        for task in spec["tasks"]:
            try:
                parse_task(task)
            except ValueError as error:
                raise ValueError(f"{path}: tasks: {error}") from None
        for algo in spec["algos"]:
            try:
                get_agent(algo)
            except ValueError as error:
                raise ValueError(f"{path}: algos: {error}") from None
        tables = {}
        for key in ("train", "agent"):
            table = spec.get(key, {})
            by_algo = {k: v for k, v in table.items() if isinstance(v, dict)}
            stray = set(by_algo) - set(spec["algos"])
            if stray:
                raise ValueError(
                    f"{path}: [{key}.{sorted(stray)[0]}] names an algorithm the sweep does not "
                    f"run; its algos: {spec['algos']}"
                )
            common = {k: v for k, v in table.items() if not isinstance(v, dict)}
            tables[key] = (common, by_algo)
        sweep = cls(
            path=path,
            out=Path(spec.get("out", f"runs/sweeps/{path.stem}")),
            tasks=tuple(spec["tasks"]),
            algos=tuple(spec["algos"]),
            seeds=tuple(spec["seeds"]),
            vmap_seeds=bool(spec.get("vmap_seeds", True)),
            train=tables["train"][0],
            train_by_algo=tables["train"][1],
            agent=tables["agent"][0],
            agent_by_algo=tables["agent"][1],
            run_name=spec.get("run_name", RUN_NAME),
        )
        try:  # every run's config builds, in a directory of its own
            dirs = sweep.run_dirs()
        except KeyError as error:
            raise ValueError(
                f"{path}: run_name {sweep.run_name!r} has no field {error}; it can use "
                "{overrides} and TrainConfig's fields ({task}, {algo}, {seed}, ...)"
            ) from None
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path}: {error}") from None
        if len(set(dirs)) < len(dirs):
            raise ValueError(
                f"{path}: run_name {sweep.run_name!r} gives several runs one directory; name "
                "{task}, {algo} and {seed} in it"
            )
        return sweep

    def _fields(self, algo: str) -> tuple[tuple[tuple[str, Any], ...], tuple[tuple[str, Any], ...]]:
        """(train fields, agent fields) for `algo`, checked against its config types."""
        from o2o.train.pipeline import TrainConfig

        names = {f.name for f in dataclasses.fields(TrainConfig)} - FIXED_FIELDS
        train = self.train | self.train_by_algo.get(algo, {})
        bad = set(train) - names
        if bad:
            raise ValueError(
                f"[train] has unknown or fixed fields {sorted(bad)}; allowed: {sorted(names)}"
            )
        fields = {f.name: f for f in dataclasses.fields(get_agent(algo).default_config)}
        agent_fields = set(fields)
        agent = self.agent | self.agent_by_algo.get(algo, {})
        bad = set(agent) - agent_fields
        if bad:
            raise ValueError(
                f"[agent] fields {sorted(bad)} are not {algo}'s; move them to [agent.OTHER] "
                "for the algorithm they belong to"
            )
        train = {k: Path(v) if k == "dataset" else v for k, v in train.items()}
        agent = {k: _agent_value(fields[k], v) for k, v in agent.items()}
        return tuple(sorted(train.items())), tuple(agent.items())

    def units(self, skip_finished: bool = True) -> list[Unit]:
        """The work: per (task, algo) its seeds not yet finished, together or one each."""
        units = []
        for task in self.tasks:
            for algo in self.algos:
                train, agent = self._fields(algo)
                whole = Unit(task, algo, self.seeds, str(self.out), train, agent, self.run_name)
                seeds = [c.seed for c in whole.configs() if not (skip_finished and finished(c))]
                groups = [seeds] if self.vmap_seeds else [[s] for s in seeds]
                units += [dataclasses.replace(whole, seeds=tuple(g)) for g in groups if g]
        return units

    def configs(self) -> list:
        """Every run's TrainConfig, finished or not."""
        return [c for unit in self.units(skip_finished=False) for c in unit.configs()]

    def run_dirs(self) -> list[Path]:
        """Every run directory of the sweep, finished or not."""
        return [c.out for c in self.configs()]


def _agent_value(field: dataclasses.Field, value: Any) -> Any:
    """A sweep file's value as the agent field takes it: lists as tuples, and "None" (TOML has
    no null; the CLI's spelling) as None where the field admits it."""
    if value == "None" and "None" in str(field.type):
        return None
    return tuple(value) if isinstance(value, list) else value


def script_sweeps(
    script: str, path: Path | None, name: str | None, flag_specs: Callable[[], list[dict]]
) -> tuple[list[Sweep], str]:
    """A benchmark script's study: the sweep file at `path` (NAME its stem unless `name`
    is given), or the sweeps its flags describe (`flag_specs`, called only then; NAME
    required); (the sweeps, NAME). A bad file or flag exits with the message."""
    try:
        if path is not None:
            return [Sweep.load(path)], name or path.stem
        if name is None:
            raise ValueError(f"{script}: give a sweep file or --name")
        return [Sweep.from_spec(s, Path(f"{script} --name {name}")) for s in flag_specs()], name
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(str(error)) from None


def finished(config: Any) -> bool:
    """Whether a run has its summary at the configured budget. A finished run is reused only
    under the same settings (`check_resumable` raises otherwise); one whose online budget grew
    is not finished (it resumes)."""
    from o2o.train.pipeline import check_resumable

    path = config.run_dir() / "summary.json"
    if not path.exists():
        return False
    check_resumable(path.parent, config)
    return read_json(path.parent / "config.json")["online_steps"] == config.online_steps


def run_unit(unit: Unit) -> list[str]:
    """Train one unit (in this process); its run directories."""
    from o2o.train.pipeline import train_together

    return [str(d) for d in train_together(unit.configs())]


def _in_worker(unit: Unit) -> list[str]:
    """`run_unit` in a pool process: its traceback comes back as the error's text."""
    try:
        return run_unit(unit)
    except Exception as error:  # reported to the parent, which retries
        raise RuntimeError(f"{type(error).__name__}: {error}\n{traceback.format_exc()}") from None


def run_local(units: list[Unit], workers: int) -> dict[Unit, str]:
    """Every unit on this machine, `workers` at a time (1: in this process); the failures,
    each with its last error."""
    if workers <= 1:
        return _with_retries(units, lambda batch: ((u, _call(run_unit, u)) for u in batch))
    context = multiprocessing.get_context("spawn")  # JAX is not fork-safe
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:

        def submit(batch: list[Unit]) -> Iterable[tuple[Unit, str | None]]:
            futures = {pool.submit(_in_worker, u): u for u in batch}
            for future in concurrent.futures.as_completed(futures):
                error = future.exception()
                yield futures[future], None if error is None else str(error)

        return _with_retries(units, submit)


def run_ray(units: list[Unit], address: str, cpus: float) -> dict[Unit, str]:
    """Every unit as a Ray task declaring `cpus` CPUs, on the cluster at `address` ("auto": the
    one this machine belongs to; "local": a new one on this machine); the failures."""
    try:
        import ray
    except ImportError:
        raise ValueError(
            "--ray-address needs Ray: pip install 'o2o[ray]' (or drop --ray-address to run on "
            "this machine)"
        ) from None
    local = address == "local"
    ray.init(address=None if local else address, include_dashboard=False, ignore_reinit_error=True)
    remote = ray.remote(num_cpus=cpus, max_retries=0)(_in_worker)

    def submit(batch: list[Unit]) -> Iterable[tuple[Unit, str | None]]:
        pending = {remote.remote(u): u for u in batch}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            unit = pending.pop(done[0])
            try:
                ray.get(done[0])
                yield unit, None
            except Exception as error:  # retried, then reported
                yield unit, str(error)

    try:
        return _with_retries(units, submit)
    finally:
        if local:  # the instance this sweep started
            ray.shutdown()


def _call(fn: Callable[[Unit], Any], unit: Unit) -> str | None:
    try:
        fn(unit)
        return None
    except Exception as error:  # retried, then reported
        return f"{type(error).__name__}: {error}"


def _with_retries(
    units: list[Unit], submit: Callable[[list[Unit]], Iterable[tuple[Unit, str | None]]]
) -> dict[Unit, str]:
    """Run `units` through `submit`, retrying the failed ones `RETRIES` times; the failures
    left, with their last error."""
    failed: dict[Unit, str] = {}
    batch = list(units)
    for attempt in range(RETRIES + 1):
        failed = {}
        for unit, error in submit(batch):
            if error is None:
                console.print(f"[green]done[/green] {unit.label}")
            else:
                failed[unit] = error
                again = "retrying once" if attempt < RETRIES else "giving up"
                console.print(f"[red]failed[/red] {unit.label} ({again}): {error.splitlines()[0]}")
        batch = list(failed)
        if not batch:
            break
    return failed


def sweep(
    path: str | Path,
    workers: int | None = None,
    ray_address: str | None = None,
    cpus_per_run: float = 1.0,
) -> tuple[Path | None, dict[Unit, str]]:
    """Run the sweep file at `path` (see the module notes); (the report's path or None when no
    run finished, the failures)."""
    from o2o.data.generate import make_dataset
    from o2o.report.report import fine_tuning_table, render_report

    spec = Sweep.load(path)
    units = spec.units()
    total = len(spec.run_dirs())
    todo = sum(len(u.seeds) for u in units)
    console.print(
        f"sweep {spec.path}: {total} runs ({len(spec.tasks)} tasks x {len(spec.algos)} algos x "
        f"{len(spec.seeds)} seeds) in {spec.out}; {total - todo} finished, {todo} to run in "
        f"{len(units)} unit{'s' if len(units) != 1 else ''}"
    )
    size = dict(units[0].train).get("dataset_size") if units else None
    for task in {u.task for u in units}:  # made once here, not by every worker at once
        if parse_task(task)[1] is not None and "dataset" not in spec.train:
            make_dataset(task, size)
    if ray_address is not None:
        failures = run_ray(units, ray_address, cpus_per_run)
    else:
        failures = run_local(units, workers or default_workers())
    done = [d for d in spec.run_dirs() if (d / "summary.json").exists()]
    report = None
    if done:
        console.print(fine_tuning_table(done))
        report = render_report(done, spec.out / "report", title=f"o2o sweep: {spec.path.name}")
        console.print(f"report: {report}")
    for unit, error in failures.items():
        console.print(f"[red]FAILED[/red] {unit.label}:\n{error}")
    return report, failures


def default_workers() -> int:
    """One worker per two cores (JAX uses two threads well), at least one."""
    return max(1, (os.cpu_count() or 1) // 2)
