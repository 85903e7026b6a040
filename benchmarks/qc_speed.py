"""Q-chunking's cost on one core: FLOPs and speed of its offline update and of its best-of-N
action selection at the reference 4x512 networks, as shares of the core's matmul peak.

    taskset -c 0 python benchmarks/qc_speed.py --dataset scene-play-singletask-task2 --rounds 3

QC (`o2o/agents/qc.py`, the manipulation preset: 4x512 GELU networks, batch 256, 32 chunks of
5 actions per decision, 10 Euler steps) is the slowest agent per update on a CPU. Rows:
- the offline update: chunks of scanned updates on the device-resident dataset (windows of 5
  steps), as the offline loop runs them;
- acting: one `sample_actions` call for one observation (the online loop's decision) and for
  50 at once (the vectorised evaluation's batch of episodes).
For each: calls per second (median over interleaved rounds), the FLOPs of one call and the
share of the one-thread float32 1024x1024 matmul peak measured in every round. XLA's count of
a compiled call takes a loop's body once, so the Euler integration (a scan) is counted as one
step: the FLOPs here add the other steps' velocity-field evaluations (counted on their own),
and the results file keeps XLA's raw count and the check that it does not grow with the steps.
The act rows also give the matrix products of the compiled call and the rows of the largest:
best-of-N is batched when every product of an Euler step takes all N chunks of every
observation at once (rows = observations x N), so the call has one product per layer and
Euler step, not N.
"""

from __future__ import annotations

import os

os.environ.setdefault(  # one thread: set before JAX starts its CPU client
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)

import argparse
import dataclasses
import json
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from offline_speed import O2OAgent
from update_speed import _flops, matmul_gflops

from o2o.agents import get_agent
from o2o.data.generate import make_dataset
from o2o.envs.tasks import parse_task
from o2o.report.tables import markdown_table
from o2o.train.pipeline import dataset_buffers, learning_task, task_preset

RESULTS = Path(__file__).resolve().parent / "results"
ACT_BATCHES = (1, 50)


def dot_rows(fn, *args) -> list[int]:
    """The output rows of every matrix product in the optimised HLO of `fn(*args)`."""
    text = jax.jit(fn).lower(*args).compile().as_text()
    shapes = re.findall(r"= f32\[([\d,]+)\][^=]*? dot\(", text)
    return [int(s.split(",")[0]) for s in shapes]


def field_gflop(agent, lead: tuple[int, ...], obs_dim: int) -> float:
    """GFLOP of one velocity-field evaluation of `agent`'s prior on rows of shape `lead`."""
    obs = jnp.zeros((*lead, obs_dim), jnp.float32)
    chunk = jnp.zeros((*lead, agent.config.horizon * agent.action_dim), jnp.float32)
    apply = agent.actor.apply_fn
    return _flops(apply, agent.actor.params, obs, chunk, jnp.zeros(lead)) / 1e9


def calls_per_second(fn, args, seconds: float) -> float:
    jax.block_until_ready(fn(*args))  # compiled
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        jax.block_until_ready(fn(*args))
        calls += 1
    return calls / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="scene-play-singletask-task2")
    parser.add_argument("--size", type=int, default=20_000, help="transitions")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0, help="per measurement")
    parser.add_argument("--name", default="qc_speed", help="results/NAME.{json,md}")
    args = parser.parse_args()

    dataset, _ = make_dataset(args.dataset, args.size)
    task = parse_task(args.dataset)[0]
    env = task.make_env()
    spaces = env.observation_space, env.action_space
    agent = get_agent("qc").agent_cls.create(task_preset("qc", args.dataset)[1], *spaces, 0)
    needs = {phase: agent.needs(phase) for phase in ("offline", "online")}
    task = learning_task(task, dataset, needs["offline"])
    buffer = dataset_buffers(dataset, task, agent.config.discount, needs)["offline"]
    update = O2OAgent("qc", args.dataset, buffer, *spaces)
    cfg = update.state[0].config

    def act_fn(a, o, k):
        return a.sample_actions(o, k, True)

    act, obs_dim, extra_steps = jax.jit(act_fn), dataset.observation_dim, cfg.flow_steps - 1
    act_rows = {}
    for n in ACT_BATCHES:
        call = (update.state[0], jnp.asarray(dataset.observations[:n]), jax.random.key(0))
        raw = _flops(act_fn, *call) / 1e9
        act_rows[n] = {
            "args": call,
            "xla_gflop": raw,
            "gflop": raw + extra_steps * field_gflop(agent, (n, cfg.num_samples), obs_dim),
            "dots": dot_rows(act_fn, *call),
            "samples": [],
        }
    # The check: XLA's count is the same with 3 Euler steps as with `flow_steps`.
    three = get_agent("qc").agent_cls.create(dataclasses.replace(cfg, flow_steps=3), *spaces, 0)
    xla_gflop_three_steps = _flops(act_fn, three, *act_rows[1]["args"][1:]) / 1e9
    update_extra = (
        extra_steps * cfg.utd_ratio * field_gflop(agent, (cfg.batch_size, cfg.num_samples), obs_dim)
    )
    update_samples, peaks = [], []
    wall, cpu = time.perf_counter(), os.times()
    for r in range(args.rounds):
        peaks.append(matmul_gflops())
        update_samples.append(update.measure(args.seconds))
        for row in act_rows.values():
            row["samples"].append(calls_per_second(act, row["args"], args.seconds / 2))
        print(
            f"round {r + 1}/{args.rounds}: peak {peaks[-1]:.0f} GFLOP/s, update "
            f"{update_samples[-1]:.2f}/s, act "
            + ", ".join(f"{n}: {row['samples'][-1]:.1f}/s" for n, row in act_rows.items()),
            file=sys.stderr,
            flush=True,
        )

    end = os.times()
    cpu_per_wall = (end.user - cpu.user + end.system - cpu.system) / (time.perf_counter() - wall)
    peak = statistics.median(peaks)
    rows = [
        {
            "call": f"offline update (batch {cfg.batch_size} windows of {cfg.horizon})",
            "per_s": statistics.median(update_samples),
            "xla_gflop": update.gflop_per_update,
            "gflop": update.gflop_per_update + update_extra,
            "samples": update_samples,
        }
    ]
    for n, row in act_rows.items():
        rows.append(
            {
                "call": f"act: {n} observation(s) x {cfg.num_samples} chunks",
                "per_s": statistics.median(row["samples"]),
                "xla_gflop": row["xla_gflop"],
                "gflop": row["gflop"],
                "samples": row["samples"],
                "matrix_products": len(row["dots"]),
                "largest_product_rows": max(row["dots"]),
            }
        )
    for row in rows:
        row["share"] = row["gflop"] * row["per_s"] / peak
    result = {
        "command": "python benchmarks/qc_speed.py " + " ".join(sys.argv[1:]),
        "dataset": f"{args.dataset} ({len(dataset)} transitions)",
        "networks": f"flow prior and {cfg.num_critics} critics of {cfg.hidden_dims}",
        "flow_steps": cfg.flow_steps,
        "xla_gflop_act_1_obs": {
            f"{cfg.flow_steps} steps": act_rows[1]["xla_gflop"],
            "3 steps": xla_gflop_three_steps,
        },
        "rounds": args.rounds,
        "matmul_gflops_one_thread": peak,
        "matmul_gflops_samples": peaks,
        "machine": {"platform": platform.platform(), "jax": jax.__version__},
        "cpu_seconds_per_second_measuring": cpu_per_wall,
        "cpus_allowed": sorted(os.sched_getaffinity(0)),
        "rows": rows,
    }
    write_results(result, RESULTS / args.name)


def write_results(result: dict, stem: Path) -> None:
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1))
    check = " and ".join(
        f"{v:.3f} GFLOP with {k}" for k, v in result["xla_gflop_act_1_obs"].items()
    )
    table = [
        {
            "call": r["call"],
            "per_s": f"{r['per_s']:.2f}",
            "gflop": f"{r['gflop']:.2f}",
            "xla": f"{r['xla_gflop']:.2f}",
            "share": f"{r['share']:.0%}",
            "dots": str(r.get("matrix_products", "")),
            "rows": str(r.get("largest_product_rows", "")),
        }
        for r in result["rows"]
    ]
    columns = {
        "call": "call",
        "per_s": "calls/s",
        "gflop": "GFLOP per call",
        "xla": "XLA's count (Euler loop once)",
        "share": "share of the core's matmul peak",
        "dots": "matrix products in the program (loop bodies once)",
        "rows": "rows of the largest",
    }
    text = (
        f"# Q-chunking on one core ({result['dataset']})\n\n`{result['command']}`\n\n"
        f"Median of {result['rounds']} interleaved rounds; float32 1024x1024 matmul peak "
        f"{result['matmul_gflops_one_thread']:.1f} GFLOP/s. CPU seconds per second while "
        f"measuring: {result['cpu_seconds_per_second_measuring']:.2f} (XLA's CPU client "
        "uses a second thread despite the one-thread flags; run under `taskset -c 0` for one "
        f"core). CPUs this process was allowed: {result['cpus_allowed']}. Networks: "
        f"{result['networks']}, {result['flow_steps']} Euler steps. JAX "
        f"{result['machine']['jax']}. XLA's count of one decision for one observation: "
        f"{check}; so the GFLOP column adds the velocity-field evaluations of the other Euler "
        "steps.\n\n" + markdown_table(table, columns) + "\n"
    )
    stem.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
