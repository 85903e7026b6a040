"""Where an o2o SAC update spends its time on this CPU, and how fast it could be if only its
matrix products cost anything: the ceiling that the update_speed target is measured against.

    python benchmarks/update_profile.py --rounds 3
    taskset -c 0 python benchmarks/update_profile.py --online --offline cql iql td3bc \\
        --out benchmarks/results/update_profile_offline

`--offline ALGO...` adds o2o's offline agents, each its reference recipe for hopper-medium in
scanned chunks on the device-resident dataset as `benchmarks/offline_speed.py` times them;
`--online NAME...` picks the SAC configurations (none: `--online` alone).

For each configuration of `update_speed.py` (same networks, batch, shapes and jitted call) it
records a JAX profiler trace of `--calls` calls on one thread and sorts each XLA op's time into
matrix products (XLA `dot`s and the YNNPACK fusions that wrap one), other YNNPACK fusions
(LayerNorm's reductions), elementwise loop fusions, copies and transposes, random-number loops
(`while`: threefry) and the rest. The "matmul-only" rate is the measured updates/s divided by
the matrix products' share of op time: what the update would reach if everything but its
matrix products were free. The profiler adds a little per-op overhead, so shares are
approximate; updates/s are measured without it.

Machine facts it also measures, because the target depends on them:
- the float32 1024x1024 matmul rate on one thread, and the sum over two single-thread
  processes running it at once: on a host whose two vCPUs share one core's floating-point
  units the sum is no higher than one thread, so no second thread can help;
- the rate of an isolated 256x256x256 matmul, the largest product in these updates (in a
  `fori_loop`, so dispatch is excluded).
"""

from __future__ import annotations

import os

os.environ.setdefault(  # one thread: set before JAX starts its CPU client
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)

import argparse
import collections
import gzip
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from offline_speed import CHUNK, O2OAgent
from update_speed import RLPD, SAC2_PLAIN, SAC10_PLAIN, O2OCase, matmul_gflops

from o2o.data.buffer import ReplayBuffer
from o2o.data.generate import make_dataset
from o2o.envs.tasks import parse_task
from o2o.report.tables import markdown_table

ROOT = Path(__file__).resolve().parent
CASES = {
    "sac": ("o2o sac, d3rlpy's networks (2 critics, no LayerNorm), UTD 1", SAC2_PLAIN, 1),
    "sac-scanned": (
        "o2o sac, d3rlpy's networks (2 critics, no LayerNorm), 20 scanned",
        SAC2_PLAIN,
        20,
    ),
    "rlpd": ("o2o rlpd (10 LayerNorm critics, UTD 20)", RLPD, 1),
    "sac-10": ("o2o sac-10, d3rlpy's networks (10 critics, no LayerNorm), UTD 1", SAC10_PLAIN, 1),
}
DATASET = "hopper-medium"  # the offline agents' data and recipes


class OfflineCase:
    """An offline agent as `profile` and `main` use a case: `offline_speed.O2OAgent`'s chunk of
    CHUNK scanned updates as one jitted call."""

    def __init__(self, algo: str, buffer: ReplayBuffer, spaces: tuple):
        self.o2o = O2OAgent(algo, DATASET, buffer, *spaces)
        self.agent, self.key = self.o2o.state
        self.step = jax.jit(lambda agent, key: self.o2o.chunk(agent, key, CHUNK))
        self.updates_per_call = CHUNK
        self.flops_per_call = self.o2o.gflop_per_update * 1e9 * CHUNK

    def measure(self, seconds: float) -> float:
        return self.o2o.measure(seconds)


CATEGORIES = ("matmul", "ynn other", "elementwise", "copy/transpose", "random numbers", "other")
RANDOM = re.compile(r"threefry|random_bits|_uniform|_normal|random_split|random_fold_in")


def matmul_256_gflops(reps: int = 50, seconds: float = 2.0) -> float:
    """An isolated 256^3 float32 matmul chain inside one jitted loop (dispatch excluded)."""
    x = jax.random.normal(jax.random.key(0), (256, 256), jnp.float32)
    w = jax.random.normal(jax.random.key(1), (256, 256), jnp.float32) / 16
    f = jax.jit(lambda a: jax.lax.fori_loop(0, reps, lambda _, y: jnp.tanh(y @ w), a))
    f(x).block_until_ready()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        out = f(x)
        n += 1
    out.block_until_ready()
    return 2 * 256**3 * reps * n / (time.perf_counter() - start) / 1e9


def two_process_gflops() -> float:
    """The summed 1024^2 matmul rate of two single-thread processes running at once."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "from update_speed import matmul_gflops; print(matmul_gflops(4.0))"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(ROOT)], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    return sum(float(p.communicate()[0].strip().splitlines()[-1]) for p in procs)


def _instructions(hlo: str) -> dict[str, str]:
    """Category of each named instruction in a compiled HLO module's text. `while` loops and
    `conditional`s are left out: their bodies' ops appear in the trace on their own."""
    bodies = dict(re.findall(r"^%(\S+) \(.*?\n(.*?)\n}", hlo, flags=re.S | re.M))
    kinds = {}
    for name, op, line in re.findall(r"^\s+(?:ROOT )?%(\S+) = .*? ([\w-]+)\((.*)$", hlo, re.M):
        op_name = re.search(r'op_name="([^"]*)"', line)
        if op in ("while", "conditional"):
            continue
        if op_name and RANDOM.search(op_name.group(1)):
            kind = "random numbers"
        elif op == "dot":
            kind = "matmul"
        elif op == "fusion" and "__ynn_fusion" in line:
            called = re.search(r"calls=%(\S+?),", line)
            body = bodies.get(called.group(1), "") if called else ""
            kind = "matmul" if " dot(" in body else "ynn other"
        elif op == "fusion":
            kind = "copy/transpose" if re.match(r"(copy|transpose)", name) else "elementwise"
        elif op in ("copy", "transpose"):
            kind = "copy/transpose"
        else:
            kind = "other"
        kinds[name] = kind
    return kinds


def profile(case: O2OCase | OfflineCase, calls: int) -> dict[str, float]:
    """Seconds per update spent in each category of XLA op, from a profiler trace."""
    agent, key, loss = case.step(case.agent, case.key)
    jax.block_until_ready(loss)
    kinds = _instructions(case.step.lower(agent, key).compile().as_text())
    with tempfile.TemporaryDirectory() as tmp:
        jax.profiler.start_trace(tmp, create_perfetto_trace=True)
        for _ in range(calls):
            agent, key, loss = case.step(agent, key)
            jax.block_until_ready(loss)
        jax.profiler.stop_trace()
        (trace,) = Path(tmp).rglob("perfetto_trace.json.gz")
        with gzip.open(trace) as f:
            events = json.load(f)["traceEvents"]
    case.agent, case.key = agent, key
    totals: dict[str, float] = collections.defaultdict(float)
    for event in events:
        if event.get("ph") == "X" and event["name"] in kinds:
            totals[kinds[event["name"]]] += event["dur"] * 1e-6
    updates = calls * case.updates_per_call
    return {k: totals[k] / updates for k in CATEGORIES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="per speed measurement")
    parser.add_argument("--calls", type=int, default=40, help="jitted calls traced per round")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "update_profile")
    parser.add_argument("--online", nargs="*", choices=list(CASES), default=list(CASES))
    parser.add_argument("--offline", nargs="*", default=[], metavar="ALGO")
    args = parser.parse_args()

    cases: dict[str, Any] = {CASES[n][0]: O2OCase(*CASES[n][1:]) for n in args.online}
    if args.offline:
        data, _ = make_dataset(DATASET, 100_000)
        buffer = ReplayBuffer.from_arrays(data.transitions())
        spaces = parse_task(DATASET)[0].spaces()
        for algo in args.offline:
            label = f"o2o {algo}, offline ({DATASET} recipe), {CHUNK} scanned"
            cases[label] = OfflineCase(algo, buffer, spaces)
    speeds: dict[str, list[float]] = {name: [] for name in cases}
    shares: dict[str, list[dict[str, float]]] = {name: [] for name in cases}
    peaks, peaks_256, peaks_two = [], [], []
    for r in range(args.rounds):
        peaks.append(matmul_gflops())
        peaks_256.append(matmul_256_gflops())
        peaks_two.append(two_process_gflops())
        for name, case in cases.items():
            speeds[name].append(case.measure(args.seconds))
            shares[name].append(profile(case, args.calls))
        print(
            f"round {r + 1}/{args.rounds}: peak {peaks[-1]:.0f}, 256^3 {peaks_256[-1]:.0f}, "
            f"two processes {peaks_two[-1]:.0f} GFLOP/s; "
            + ", ".join(f"{v[-1]:.1f}/s" for v in speeds.values()),
            file=sys.stderr,
        )

    peak = statistics.median(peaks)
    rows = []
    for name, case in cases.items():
        seconds = {k: statistics.median(s[k] for s in shares[name]) for k in CATEGORIES}
        total = sum(seconds.values())
        ups = statistics.median(speeds[name])
        flops = case.flops_per_call / case.updates_per_call
        matmul_share = seconds["matmul"] / total
        rows.append(
            {
                "configuration": name,
                "updates_per_s": ups,
                "gflop_per_update": flops / 1e9,
                "share_of_peak": flops * ups / (peak * 1e9),
                **{f"time_{k}": seconds[k] / total for k in CATEGORIES},
                "matmul_only_updates_per_s": ups / matmul_share,
                "matmul_only_share_of_peak": flops * ups / matmul_share / (peak * 1e9),
                "samples": speeds[name],
            }
        )
    result = {
        "command": "python benchmarks/update_profile.py " + " ".join(sys.argv[1:]),
        "jax": jax.__version__,
        "threads": 1,
        "matmul_1024_gflops": peak,
        "matmul_1024_two_processes_gflops": statistics.median(peaks_two),
        "matmul_256_gflops": statistics.median(peaks_256),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


def markdown(result: dict) -> str:
    columns = {
        "configuration": "configuration",
        "updates_per_s": "updates/s",
        "share_of_peak": "share of the 1024² peak",
        **{f"time_{k}": f"{k} time" for k in CATEGORIES},
        "matmul_only_updates_per_s": "updates/s if only matmuls cost",
        "matmul_only_share_of_peak": "matmul-only share of the peak",
    }
    rows = [
        {
            k: f"{v:.0%}" if k.startswith(("time_", "share", "matmul_only_share")) else v
            for k, v in row.items()
        }
        for row in result["rows"]
    ]
    return (
        "# Where an update's time goes (one thread; SAC: batch 256, 256x256 MLPs, obs 17, act 6; "
        f"offline agents: their {DATASET} recipes)\n\n"
        f"`{result['command']}` (JAX {result['jax']}). Float32 matmul rates on this host: "
        f"1024² on one thread {result['matmul_1024_gflops']:.0f} GFLOP/s; two single-thread "
        f"processes at once, summed, {result['matmul_1024_two_processes_gflops']:.0f} GFLOP/s; an "
        f"isolated 256³ chain {result['matmul_256_gflops']:.0f} GFLOP/s. Medians over rounds. "
        "Time shares are of XLA op time in a profiler trace; the last two columns assume every "
        "non-matmul op were free.\n\n" + markdown_table(rows, columns)
    )


if __name__ == "__main__":
    main()
