"""Exported policies against o2o's own on one CPU core: actions per second through onnxruntime
and through JAX, and the largest difference between their actions.

    taskset -c 0 python benchmarks/export_speed.py --rounds 5

Each agent has its reference networks (the `default` preset) on Hopper's shapes (11-d
observations, 3-d actions), random parameters (the cost does not depend on their values) and
an observation normaliser, so both sides compute the same whole graph (`o2o.export`): raw
observation in, action in the environment's units out. JAX runs the jitted `policy_function`
(critic ensembles vmapped, as o2o evaluates); onnxruntime runs the exported file with one
thread. Batches: one observation (a robot's control step: the latency counts) and 100 (an
evaluation's episodes in lock-step). The two sides alternate within every round and the ratio
is the median over rounds of the per-round ratios, so a noisy host moves both. QC decides a
chunk of 5 actions per call: its actions per second are 5 times its calls.
"""

from __future__ import annotations

import os

os.environ.setdefault(  # one thread: set before JAX starts its CPU client
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)

import argparse
import importlib.metadata
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np

from o2o import export
from o2o.agents import get_agent
from o2o.envs.tasks import ObservationNormalizer
from o2o.report.tables import markdown_table

RESULTS = Path(__file__).resolve().parent / "results"
OBS = gym.spaces.Box(-np.inf, np.inf, (11,), np.float32)
ACT = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
IO = export.PolicyIO(11, (-1.0,) * 3, (1.0,) * 3, ObservationNormalizer((0.5,) * 11, (2.0,) * 11))
ALGOS = ("sac", "td3bc", "iql", "bc", "fql", "flow_bc", "idql", "qc")
BATCHES = (1, 100)
CHECKED = 1000  # observations the difference is measured on


def calls_per_second(fn, seconds: float) -> float:
    fn()  # compiled or warmed up
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        n += 1
    return n / (time.perf_counter() - start)


def sides(agent, policy: export.OnnxPolicy, batch: int):
    """(jax call, onnxruntime call) on the same `batch` observations and noise."""
    obs = np.random.default_rng(0).normal(size=(batch, 11)).astype(np.float32)
    noise = export.random_noise(agent, batch, seed=0)
    act = jax.jit(export.policy_function(agent, IO, unroll=False))
    jax_obs = jnp.asarray(obs)
    jax_noise = {k: jnp.asarray(v) for k, v in noise.items()}
    return (
        lambda: act(jax_obs, **jax_noise).block_until_ready(),
        lambda: policy(obs, **noise),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0, help="per side, batch and round")
    parser.add_argument("--algos", nargs="+", default=list(ALGOS))
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="o2o-export-"))
    calls, rows = {}, []
    for algo in args.algos:
        spec = get_agent(algo)
        agent = spec.agent_cls.create(spec.default_config, OBS, ACT, 0)
        start = time.perf_counter()
        path = export.export_onnx(agent, IO, folder / f"{algo}.onnx", {"algo": algo})
        seconds = time.perf_counter() - start
        policy = export.OnnxPolicy(path, threads=1)
        obs = np.random.default_rng(1).normal(size=(CHECKED, 11)).astype(np.float32) * 2
        difference = export.max_difference(agent, IO, policy, obs)
        for batch in BATCHES:
            calls[algo, batch] = sides(agent, policy, batch)
        horizon = agent.needs("online").horizon
        rows.append(
            {
                "algo": algo,
                "noise": ", ".join(export.noise_shapes(agent, (1,))) or "-",
                "horizon": horizon,
                "mb": path.stat().st_size / 1e6,
                "export_s": seconds,
                "max_diff": difference,
            }
        )
        print(f"{algo}: exported in {seconds:.1f} s, max |diff| {difference:.2g}", flush=True)
    rates: dict[tuple[str, int, str], list[float]] = {}
    for round_ in range(args.rounds):
        for (algo, batch), (jax_call, ort_call) in calls.items():
            for side, call in (("jax", jax_call), ("onnx", ort_call)):
                rate = calls_per_second(call, args.seconds)
                rates.setdefault((algo, batch, side), []).append(rate)
        print(f"round {round_ + 1}/{args.rounds} done", flush=True)
    for row in rows:
        for batch in BATCHES:
            jax_rates = rates[row["algo"], batch, "jax"]
            onnx_rates = rates[row["algo"], batch, "onnx"]
            actions = batch * row["horizon"]
            row[f"jax_{batch}"] = statistics.median(jax_rates) * actions
            row[f"onnx_{batch}"] = statistics.median(onnx_rates) * actions
            ratios = [o / j for o, j in zip(onnx_rates, jax_rates, strict=True)]
            row[f"ratio_{batch}"] = statistics.median(ratios)
    command = f"taskset -c 0 python benchmarks/export_speed.py --rounds {args.rounds} " + (
        f"--seconds {args.seconds} --algos {' '.join(args.algos)}"
    )
    import onnxruntime

    converter = importlib.metadata.version("jax2onnx")
    meta = {
        "command": command,
        "machine": platform.processor() or platform.machine(),
        "jax": jax.__version__,
        "jax2onnx": converter,
        "onnxruntime": onnxruntime.__version__,
        "checked_observations": CHECKED,
    }
    stem = RESULTS / "export_speed"
    stem.with_suffix(".json").write_text(json.dumps(meta | {"rows": rows}, indent=1))
    columns = {
        "algo": "agent",
        "noise": "noise inputs",
        "mb": "file (MB)",
        "export_s": "export (s)",
        "max_diff": f"max abs difference ({CHECKED} obs)",
    }
    for batch in BATCHES:
        columns |= {
            f"jax_{batch}": f"JAX actions/s (batch {batch})",
            f"onnx_{batch}": f"onnxruntime actions/s (batch {batch})",
            f"ratio_{batch}": f"onnxruntime / JAX (batch {batch})",
        }
    formatted = [
        {
            k: v
            if isinstance(v, str | int)
            else f"{v:.2g}"
            if k == "max_diff"
            else f"{v:.2f}x"
            if k.startswith("ratio")
            else f"{v:,.1f}"
            if k in ("mb", "export_s")
            else f"{v:,.0f}"
            for k, v in row.items()
            if k in columns
        }
        for row in rows
    ]
    stem.with_suffix(".md").write_text(
        "# Exported ONNX policies against o2o's JAX policies, one CPU core\n\n"
        f"`{command}`\n\n"
        f"jax {jax.__version__}, jax2onnx {converter}, onnxruntime "
        f"{onnxruntime.__version__} (one thread). Reference networks, Hopper's shapes, random "
        "parameters. Actions per second: median over rounds (QC: 5 actions per call); the "
        "ratio: median of the per-round ratios, the two sides alternating in each round. The "
        f"difference: largest |onnxruntime - o2o| over {CHECKED} observations, same noise. Export: "
        "seconds to convert and write the file, in the order of the rows (the first includes "
        "the converter's start-up).\n\n"
        f"{markdown_table(formatted, columns)}\n"
    )
    print(f"wrote {stem}.{{json,md}}")


if __name__ == "__main__":
    main()
