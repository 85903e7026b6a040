"""Gradient updates per second: o2o's SAC and RLPD against d3rlpy's SAC, side by side.

Run `make bench` (it builds the peer venv) or `.venv/bin/python benchmarks/update_speed.py`.
All rows are measured in one run on one machine, interleaved over `--rounds` rounds (the
median is reported; every other round in reverse order), so their ratios are comparable even on
a noisy machine. Networks: 256x256 MLPs, batch 256, observation dim 17, action dim 6
(HalfCheetah's shapes).

Rows (d3rlpy's SAC critics have no LayerNorm, so "d3rlpy's networks" rows turn it off):
- o2o sac, d3rlpy's networks: 2 critics without LayerNorm, one full update (critics, actor,
  temperature) per jitted call with the batch drawn on the device, as the online loop runs at
  UTD 1; and the same with 20 updates scanned inside one call, as offline chunks run.
- o2o sac with 2 LayerNorm critics: the same with RLPD's LayerNorm critics (`RLPD_2`, `sac`'s
  defaults until 2026-12; the results file's "o2o sac default" row).
- o2o rlpd: 10 LayerNorm critics, UTD 20: one call = 20 critic updates + 1 actor and
  temperature update, counted as 20 updates (the unit of the UTD ratio); on online data only,
  and as RLPD runs, with every minibatch half dataset, half online (`MixedSampler`). A third
  RLPD row mixes the same shares per block instead, as o2o did until 2026-12 (the first ten
  minibatches from the dataset, the rest online; `BlockMix` below), to show what the fix
  costs, side by side.
- o2o sac-10, d3rlpy's networks: 10 critics without LayerNorm, like d3rlpy's `n_critics=10`.
- d3rlpy sac (n_critics 2 and 10): its own sample-and-update loop (benchmarks/peer_d3rlpy.py),
  the better of 1 and 2 torch threads in each round.
The fraction of peak divides XLA's FLOP count of one compiled update by the time it takes
and by the measured float32 1024x1024 matmul rate.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np

from o2o.agents.sac import RLPD, RLPD_2, SAC
from o2o.data.buffer import MixedSampler, ReplayBuffer

ROOT = Path(__file__).resolve().parent
PEER_PYTHON = ROOT.parent / ".venv-bench" / "bin" / "python"
OBS_DIM, ACT_DIM, BATCH = 17, 6, 256


def matmul_gflops(seconds: float = 2.0) -> float:
    a = jax.random.normal(jax.random.key(0), (1024, 1024), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        out = f(a)
        n += 1
    out.block_until_ready()
    return 2 * 1024**3 * n / (time.perf_counter() - start) / 1e9


def _buffer(n: int = 100_000, seed: int = 0) -> ReplayBuffer:
    rng = np.random.default_rng(seed)
    return ReplayBuffer.from_arrays(
        {
            "observations": rng.normal(size=(n, OBS_DIM)).astype(np.float32),
            "actions": rng.uniform(-1, 1, (n, ACT_DIM)).astype(np.float32),
            "rewards": rng.normal(size=n).astype(np.float32),
            "next_observations": rng.normal(size=(n, OBS_DIM)).astype(np.float32),
            "masks": np.ones(n, np.float32),
        }
    )


def _flops(fn, *args) -> float:
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", float("nan")))


class BlockMix(MixedSampler):
    """o2o's mix before 2026-12, for the speed comparison only: the block's first
    round(ratio * num * batch) rows from the dataset, then reshaped into minibatches."""

    def sample_minibatches(self, key, online, num, batch_size, step, horizon=1):
        n = num * batch_size
        key_off, key_on = jax.random.split(key)
        from_offline = jnp.arange(n) < jnp.round(self.offline_ratio * n).astype(jnp.int32)
        rows = jax.tree.map(
            lambda a, b: jnp.where(from_offline.reshape(n, *[1] * (a.ndim - 1)), a, b),
            self.offline.sample(key_off, n),
            online.sample(key_on, n),
        )
        return jax.tree.map(lambda x: x.reshape(num, batch_size, *x.shape[1:]), rows)


class O2OCase:
    """One agent config: a jitted call that samples `utd` batches on the device and updates;
    with `mix`, each batch also draws from a dataset buffer of the same size."""

    def __init__(self, config, calls_per_jit: int = 1, mix: type[MixedSampler] | None = None):
        obs = gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32)
        act = gym.spaces.Box(-1, 1, (ACT_DIM,), np.float32)
        self.config = config
        self.agent = SAC.create(config, obs, act, 0)
        self.buffer = _buffer()
        dataset = None if mix is None else _buffer(seed=1)
        self.sampler = (mix or MixedSampler).create(dataset, config.offline_ratio)
        utd = config.utd_ratio

        def one(carry, _):
            agent, key = carry
            key, sub = jax.random.split(key)
            batch = self.sampler.sample_minibatches(sub, self.buffer, utd, BATCH, jnp.int32(0))
            agent, metrics = agent.update(batch)
            return (agent, key), metrics["critic_loss"]

        def step(agent, key):
            if calls_per_jit == 1:
                (agent, key), loss = one((agent, key), None)
                return agent, key, loss
            (agent, key), losses = jax.lax.scan(one, (agent, key), None, length=calls_per_jit)
            return agent, key, losses[-1]

        self.updates_per_call = utd * calls_per_jit

        self.step = jax.jit(step, donate_argnums=0)
        self.key = jax.random.key(1)
        # XLA counts a scan body once, so FLOPs are taken from the unscanned pieces:
        # one call = utd critic updates + 1 actor/temperature update, `calls_per_jit` times.
        one_batch = self.buffer.sample(self.key, BATCH)
        critic = _flops(lambda a, b: a.update_critic(b), self.agent, one_batch)
        actor = _flops(lambda a, b: a.update_actor(b), self.agent, one_batch)
        self.flops_per_call = calls_per_jit * (utd * critic + actor)

    def measure(self, seconds: float) -> float:
        """Updates per second (a call counts `utd_ratio` updates)."""
        agent, key, loss = self.step(self.agent, self.key)
        loss.block_until_ready()
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            agent, key, loss = self.step(agent, key)
            calls += 1
        loss.block_until_ready()
        self.agent, self.key = agent, key
        return calls * self.updates_per_call / (time.perf_counter() - start)


def measure_peer(n_critics: int, updates: int) -> dict | None:
    """d3rlpy's best of 1 and 2 torch threads (1 is often faster for such small networks)."""
    if not PEER_PYTHON.exists():
        return None
    best = None
    for threads in (1, 2):
        cmd = [
            str(PEER_PYTHON),
            str(ROOT / "peer_d3rlpy.py"),
            "--algo",
            "sac",
            "--n-critics",
            str(n_critics),
            "--updates",
            str(updates),
            "--warmup",
            "20",
            "--obs-dim",
            str(OBS_DIM),
            "--act-dim",
            str(ACT_DIM),
            "--batch",
            str(BATCH),
            "--threads",
            str(threads),
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        if best is None or result["updates_per_s"] > best["updates_per_s"]:
            best = result
    return best


SAC2_PLAIN = dataclasses.replace(RLPD_2, critic_layer_norm=False)
SAC10_PLAIN = dataclasses.replace(SAC2_PLAIN, num_critics=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0, help="per o2o measurement")
    parser.add_argument("--peer-updates", type=int, default=150, help="per d3rlpy measurement")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "update_speed")
    parser.add_argument(
        "--only", nargs="+", default=None, help="measure only rows whose name contains one of these"
    )
    args = parser.parse_args()

    cases = {
        "o2o sac, d3rlpy's networks (2 critics, no LayerNorm), UTD 1": O2OCase(SAC2_PLAIN),
        "o2o sac, d3rlpy's networks (2 critics, no LayerNorm), 20 scanned": O2OCase(SAC2_PLAIN, 20),
        "o2o sac (2 LayerNorm critics, RLPD_2), UTD 1": O2OCase(RLPD_2),
        "o2o rlpd (10 LayerNorm critics, UTD 20), online data only": O2OCase(RLPD),
        "o2o rlpd (10 LayerNorm critics, UTD 20), 50/50 mix in every minibatch": O2OCase(
            RLPD, mix=MixedSampler
        ),
        "o2o rlpd (10 LayerNorm critics, UTD 20), 50/50 mix per block (before 2026-12)": O2OCase(
            RLPD, mix=BlockMix
        ),
        "o2o sac-10, d3rlpy's networks (10 critics, no LayerNorm), UTD 1": O2OCase(SAC10_PLAIN),
        "o2o sac-10, d3rlpy's networks (10 critics, no LayerNorm), 20 scanned": O2OCase(
            SAC10_PLAIN, 20
        ),
    }
    peers = {"d3rlpy sac (2 critics)": 2, "d3rlpy sac (10 critics)": 10}
    if args.only is not None:
        cases = {k: v for k, v in cases.items() if any(text in k for text in args.only)}
        peers = {k: v for k, v in peers.items() if any(text in k for text in args.only)}
    samples: dict[str, list[float]] = {name: [] for name in [*cases, *peers]}
    peaks, peer_info = [], {}
    for r in range(args.rounds):
        peaks.append(matmul_gflops())
        order = list(cases) if r % 2 == 0 else list(reversed(cases))  # no row always first
        for name in order:
            samples[name].append(cases[name].measure(args.seconds))
        for name, n in peers.items():
            result = measure_peer(n, args.peer_updates)
            if result is not None:
                samples[name].append(result["updates_per_s"])
                peer_info = {k: result[k] for k in ("torch", "d3rlpy", "omp_wait_policy")}
        print(
            f"round {r + 1}/{args.rounds}: "
            + ", ".join(f"{k}: {v[-1]:.1f}/s" for k, v in samples.items() if v),
            file=sys.stderr,
        )

    peak = statistics.median(peaks)
    rows = {}
    for name, values in samples.items():
        if not values:
            continue
        row = {"updates_per_s": statistics.median(values), "samples": values}
        if name in cases:
            case = cases[name]
            flops_per_update = case.flops_per_call / case.updates_per_call
            row["gflop_per_update"] = flops_per_update / 1e9
            row["fraction_of_matmul_peak"] = flops_per_update * row["updates_per_s"] / (peak * 1e9)
        rows[name] = row
    ratios = {}
    for mine in rows:
        if not mine.startswith("o2o"):
            continue
        peer = "d3rlpy sac (2 critics)" if "(2 " in mine else "d3rlpy sac (10 critics)"
        if peer in rows:
            ratios[f"{mine} / {peer}"] = rows[mine]["updates_per_s"] / rows[peer]["updates_per_s"]
    mixes = [name for name in rows if "mix" in name]  # the fix's cost: new / old
    if len(mixes) == 2:
        ratios[f"{mixes[0]} / {mixes[1]}"] = (
            rows[mixes[0]]["updates_per_s"] / rows[mixes[1]]["updates_per_s"]
        )
    result = {
        "command": "python benchmarks/update_speed.py " + " ".join(sys.argv[1:]),
        "machine": {
            "cpu_count": jax.local_device_count(),
            "platform": platform.platform(),
            "processor": platform.processor(),
            "jax": jax.__version__,
            "jax_backend": jax.default_backend(),
            **{f"peer_{k}": v for k, v in peer_info.items()},
        },
        "shapes": {"obs_dim": OBS_DIM, "act_dim": ACT_DIM, "batch": BATCH, "hidden": [256, 256]},
        "matmul_gflops": peak,
        "rows": rows,
        "ratios": ratios,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


def markdown(result: dict) -> str:
    lines = [
        "# Gradient updates per second (batch 256, 256x256 MLPs, obs 17, act 6)",
        "",
        f"Command: `{result['command']}`; JAX backend `{result['machine']['jax_backend']}`; "
        f"float32 1024x1024 matmul: {result['matmul_gflops']:.1f} GFLOP/s. "
        "Median of interleaved rounds, one run.",
        "",
        "| configuration | updates/s | GFLOP per update | fraction of matmul peak |",
        "|---|---|---|---|",
    ]
    for name, row in result["rows"].items():
        gflop = f"{row['gflop_per_update']:.2f}" if "gflop_per_update" in row else "-"
        frac = f"{row['fraction_of_matmul_peak']:.0%}" if "fraction_of_matmul_peak" in row else "-"
        lines.append(f"| {name} | {row['updates_per_s']:.1f} | {gflop} | {frac} |")
    lines += ["", "| ratio | value |", "|---|---|"]
    lines += [f"| {k} | {v:.2f}x |" for k, v in result["ratios"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
