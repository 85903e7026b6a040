"""Offline updates per second, one core each: o2o's BC, TD3+BC, IQL, AWAC and CQL against
d3rlpy's, with the share of the core's float32 matmul peak that each o2o update reaches.

    python benchmarks/offline_speed.py --dataset hopper-medium --rounds 3

`benchmarks/offline.py` times both libraries while they train side by side, which is what a
user running them together sees, but the two processes then contend for the machine's memory
and caches. Here nothing runs concurrently: each round measures every o2o agent (its reference
recipe, chunks of scanned updates on the device-resident dataset, as the offline loop runs
them), then every d3rlpy algorithm (`peer_d3rlpy_offline.py`: its recipes, on the same training
episodes), each on one thread; the median over rounds is reported. The peak is a 1024x1024
float32 matmul on one thread, measured in every round. GFLOP per update is XLA's count for one
compiled update; d3rlpy's share of the peak is not given because its FLOPs are not counted, but
with the same arithmetic it would be the o2o share divided by the speed ratio.
"""

from __future__ import annotations

import os

os.environ.setdefault(  # one thread: set before JAX starts its CPU client
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
from offline import PEER_PYTHON, PEERS, RESULTS, peer_data
from update_speed import _flops, matmul_gflops

from o2o.agents import get_agent
from o2o.data.buffer import ReplayBuffer
from o2o.data.generate import make_dataset
from o2o.envs.tasks import parse_task
from o2o.report.tables import markdown_table
from o2o.train.offline import _update_chunk, _update_chunk_seeds, stack
from o2o.train.pipeline import task_preset

CHUNK = 50  # updates per jitted call while timing
PEER_UPDATES = {"bc": 1000, "td3+bc": 300, "iql": 300, "awac": 200, "cql": 40}


class O2OAgent:
    """One o2o algorithm's reference agent (its preset for the dataset) with a jitted chunk of
    updates on `buffer`; with `seeds` > 1, that many seeds' agents in one vmapped chunk (as
    `o2o train --seeds` runs them)."""

    def __init__(
        self, algo: str, dataset: str, buffer: ReplayBuffer, obs_space, act_space, seeds: int = 1
    ):
        spec = get_agent(algo)
        cfg = task_preset(algo, dataset)[1]
        agents = [spec.agent_cls.create(cfg, obs_space, act_space, s) for s in range(seeds)]
        keys = [jax.random.key(s + 1) for s in range(seeds)]
        horizon = agents[0].needs("offline").horizon
        self.state = (stack(agents), stack(keys)) if seeds > 1 else (agents[0], keys[0])
        update = _update_chunk_seeds if seeds > 1 else _update_chunk

        def chunk(agent, key, num_updates):
            return update(
                agent,
                key,
                buffer,
                num_updates=num_updates,
                utd=cfg.utd_ratio,
                batch_size=cfg.batch_size,
                horizon=horizon,
            )

        self.chunk = chunk
        flops = _flops(lambda a, k: chunk(a, k, 1), *self.state)
        freq = getattr(cfg, "policy_freq", 1)
        if freq > 1:
            # XLA counts TD3's delayed actor update (a `lax.cond`) in every critic step; it runs
            # in one of `policy_freq`, vmapped too (its step counter is unbatched: `seed_axes`).
            batch = buffer.sample(jax.random.key(0), cfg.batch_size)
            actor = _flops(lambda a, b: type(a).update_actor(a, b), agents[0], batch)
            flops -= seeds * cfg.utd_ratio * actor * (1 - 1 / freq)
        self.gflop_per_update = flops / seeds / 1e9  # of one seed

    def measure(self, seconds: float) -> float:
        """Updates per second (of each seed)."""
        agent, key, _ = self.chunk(*self.state, CHUNK)  # compiled on first use
        jax.block_until_ready(agent)
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            agent, key, _ = jax.block_until_ready(self.chunk(agent, key, CHUNK))  # not queued
            calls += 1
        self.state = (agent, key)
        return calls * CHUNK / (time.perf_counter() - start)


def measure_peer(algo: str, data: Path) -> dict:
    """d3rlpy's updates/s for `algo` on one torch thread (after 20 untimed updates)."""
    cmd = [
        str(PEER_PYTHON),
        str(Path(__file__).resolve().parent / "peer_d3rlpy_offline.py"),
        f"--algo={algo}",
        f"--data={data}",
        f"--steps={PEER_UPDATES[algo]}",
        "--warmup=20",
        "--threads=1",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, stdin=subprocess.DEVNULL)
    return json.loads(out.stdout.strip().splitlines()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="hopper-medium")
    parser.add_argument("--algos", nargs="+", default=list(PEERS), choices=list(PEERS))
    parser.add_argument("--size", type=int, default=100_000, help="transitions in the dataset")
    parser.add_argument("--holdout-episodes", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0, help="per o2o measurement")
    parser.add_argument("--name", default="offline_speed", help="results/NAME.{json,md}")
    args = parser.parse_args()
    if not PEER_PYTHON.exists():
        raise SystemExit(f"{PEER_PYTHON} is missing: run `make bench-venv` first")

    dataset, _ = make_dataset(args.dataset, args.size)
    buffer = ReplayBuffer.from_arrays(dataset.transitions())
    env = parse_task(args.dataset)[0].make_env()
    spaces = env.observation_space, env.action_space
    agents = {a: O2OAgent(a, args.dataset, buffer, *spaces) for a in args.algos}
    data = peer_data(args.dataset, args.size, args.holdout_episodes)  # as benchmarks/offline.py
    samples: dict[str, dict[str, list[float]]] = {a: {"o2o": [], "d3rlpy": []} for a in agents}
    peaks, peer_versions = [], {}
    for r in range(args.rounds):
        peaks.append(matmul_gflops())
        for algo, agent in agents.items():
            samples[algo]["o2o"].append(agent.measure(args.seconds))
        for algo in agents:
            peer = measure_peer(PEERS[algo], data)
            samples[algo]["d3rlpy"].append(peer["updates_per_s"])
            peer_versions = {k: peer[k] for k in ("d3rlpy", "torch", "threads")}
        print(
            f"round {r + 1}/{args.rounds}: peak {peaks[-1]:.0f} GFLOP/s, "
            + ", ".join(
                f"{a}: {s['o2o'][-1]:.1f} vs {s['d3rlpy'][-1]:.1f}/s" for a, s in samples.items()
            ),
            file=sys.stderr,
            flush=True,
        )

    peak = statistics.median(peaks)
    rows = []
    for algo, s in samples.items():
        o2o, peer = statistics.median(s["o2o"]), statistics.median(s["d3rlpy"])
        gflop = agents[algo].gflop_per_update
        rows.append(
            {
                "algo": algo,
                "peer": f"d3rlpy {PEERS[algo]}",
                "o2o_ups": o2o,
                "d3rlpy_ups": peer,
                "ratio": o2o / peer,
                "gflop": gflop,
                "o2o_share": gflop * o2o / peak,
                "o2o_samples": s["o2o"],
                "d3rlpy_samples": s["d3rlpy"],
            }
        )
    result = {
        "command": "python benchmarks/offline_speed.py " + " ".join(sys.argv[1:]),
        "dataset": args.dataset,
        "rounds": args.rounds,
        "matmul_gflops_one_thread": peak,
        "matmul_gflops_samples": peaks,
        "machine": {"platform": platform.platform(), "jax": jax.__version__, **peer_versions},
        "rows": rows,
    }
    write_results(result, RESULTS / args.name)


def write_results(result: dict, stem: Path) -> None:
    """results/NAME.json, and the Markdown table with the share of the peak that 5x d3rlpy's
    speed would take (d3rlpy's rate times 5, at o2o's FLOPs per update)."""
    peak = result["matmul_gflops_one_thread"]
    table = [
        {
            "algo": f"{r['algo']} / {r['peer']}",
            "o2o": f"{r['o2o_ups']:.1f}",
            "d3rlpy": f"{r['d3rlpy_ups']:.1f}",
            "ratio": f"{r['ratio']:.2f}x",
            "gflop": f"{r['gflop']:.2f}",
            "share": f"{r['o2o_share']:.0%}",
            "five": f"{5 * r['d3rlpy_ups'] * r['gflop'] / peak:.0%}",
        }
        for r in result["rows"]
    ]
    columns = {
        "algo": "o2o / d3rlpy algorithm",
        "o2o": "o2o updates/s",
        "d3rlpy": "d3rlpy updates/s",
        "ratio": "o2o / d3rlpy",
        "gflop": "o2o GFLOP per update",
        "share": "o2o share of the core's matmul peak",
        "five": "share 5x d3rlpy would take",
    }
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1))
    stem.with_suffix(".md").write_text(
        f"# Offline updates per second on one core ({result['dataset']}, batch 256)\n\n"
        f"`{result['command']}`\n\nMedian of {result['rounds']} interleaved rounds, nothing "
        f"running concurrently; one-thread float32 1024x1024 matmul peak: {peak:.1f} GFLOP/s "
        "(median over rounds). Recipes: each library's reference one (see "
        "benchmarks/peer_d3rlpy_offline.py). The last column is the share of that peak an "
        "update doing o2o's arithmetic would need to run at 5x d3rlpy's rate: over 100% "
        "cannot be reached on this core in float32 by any implementation.\n\n"
        f"{markdown_table(table, columns)}"
    )
    print(stem.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
