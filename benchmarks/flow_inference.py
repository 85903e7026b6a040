"""What acting costs: actions per second of Gaussian and flow policies, and of best-of-N
selection for N in {1, 8, 32, 128}, on one CPU core.

    python benchmarks/flow_inference.py --name cpu

Each row times the agent's jitted `sample_actions` on one observation (acting in one
environment: the latency a robot's control loop sees) and on a batch of 64 observations, with
the reference network sizes and Hopper's shapes (11-d observations, 3-d actions). Rows are
interleaved over `--rounds` rounds and the median reported, so their ratios compare on a noisy
machine. QC returns a chunk of h actions per decision, executed open-loop: its actions per
second are h times its decisions per second.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault(
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np

from o2o.agents import get_agent
from o2o.report.tables import markdown_table

RESULTS = Path(__file__).resolve().parent / "results"
OBS = gym.spaces.Box(-np.inf, np.inf, (11,), np.float32)
ACT = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
SAMPLES = (1, 8, 32, 128)


def rows() -> list[tuple[str, str, int | None]]:
    """(label, algorithm, N) for every timed configuration."""
    out = [("sac (tanh-Gaussian)", "sac", None), ("flow_bc (10 Euler steps)", "flow_bc", None)]
    out.append(("fql (one-step policy)", "fql", None))
    out += [(f"idql, N = {n}", "idql", n) for n in SAMPLES]
    out += [(f"qc, N = {n}", "qc", n) for n in SAMPLES]
    return out


def make_act(algo: str, num_samples: int | None):
    """The agent (reference config, N overridden) and its jitted act function."""
    spec = get_agent(algo)
    config = spec.default_config
    if num_samples is not None:
        config = dataclasses.replace(config, num_samples=num_samples)
    agent = spec.agent_cls.create(config, OBS, ACT, 0)
    act = jax.jit(lambda a, o, k: a.sample_actions(o, k, deterministic=True))
    return agent, act, getattr(config, "horizon", 1)


def calls_per_second(agent, act, batch: int, seconds: float) -> float:
    obs = jnp.asarray(np.random.default_rng(0).normal(size=(batch, 11)), jnp.float32)
    key = jax.random.key(0)
    act(agent, obs, key).block_until_ready()  # compile
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        out = act(agent, obs, jax.random.fold_in(key, n))
        out.block_until_ready()  # one decision at a time, as a control loop
        n += 1
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.0, help="per row, batch and round")
    args = parser.parse_args()
    configs = [(label, *make_act(algo, n)) for label, algo, n in rows()]
    timings: dict[tuple[str, int], list[float]] = {}
    for round_ in range(args.rounds):
        for label, agent, act, _ in configs:
            for batch in (1, 64):
                rate = calls_per_second(agent, act, batch, args.seconds)
                timings.setdefault((label, batch), []).append(rate)
        print(f"round {round_ + 1}/{args.rounds} done", flush=True)

    base = statistics.median(timings[("sac (tanh-Gaussian)", 1)])
    table = []
    for label, _, _, horizon in configs:
        single = statistics.median(timings[(label, 1)])
        batched = statistics.median(timings[(label, 64)])
        table.append(
            {
                "policy": label,
                "decisions_per_s": single,
                "actions_per_s": single * horizon,
                "vs_sac": single * horizon / base,
                "states_per_s_batch64": batched * 64 * horizon,
            }
        )
    command = (
        f"python benchmarks/flow_inference.py --name {args.name} --rounds {args.rounds} "
        f"--seconds {args.seconds}"
    )
    stem = RESULTS / f"flow_inference_{args.name}"
    meta = {"command": command, "machine": platform.processor() or platform.machine()}
    stem.with_suffix(".json").write_text(json.dumps(meta | {"rows": table}, indent=1))
    columns = {
        "policy": "policy",
        "decisions_per_s": "decisions/s (1 state)",
        "actions_per_s": "actions/s (1 state)",
        "vs_sac": "actions/s vs SAC",
        "states_per_s_batch64": "actions/s (batch of 64 states)",
    }
    formatted = [
        {
            k: (f"{v:.2f}x" if k == "vs_sac" else f"{v:,.0f}" if isinstance(v, float) else v)
            for k, v in row.items()
        }
        for row in table
    ]
    stem.with_suffix(".md").write_text(
        "# Acting cost of Gaussian and flow policies (one CPU core, Hopper's shapes, reference "
        f"network sizes)\n\n`{command}`\n\n{markdown_table(formatted, columns)}\n"
    )
    print(f"wrote {stem}.{{json,md}}")


if __name__ == "__main__":
    main()
