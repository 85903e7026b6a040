"""d3rlpy's update speed on random data: the peer side of the o2o speed benchmarks.

Runs only in the peer venv (`make bench-venv`: torch==2.13.0, d3rlpy==2.8.1), which keeps
d3rlpy's older gymnasium pin away from the project. It times d3rlpy's own training step,
as `fit` runs it: `dataset.sample_transition_batch(batch_size)` then `algo.update(batch)`.
Prints one JSON line.

OMP_WAIT_POLICY defaults to PASSIVE here: torch's OpenMP threads otherwise spin-wait, and on a
busy 2-core machine one update then takes ~1.3 s instead of ~16 ms. Idle machines barely care.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read once, when torch loads OpenMP

import d3rlpy
import numpy as np
import torch


def build(algo: str, n_critics: int, batch: int, hidden: int) -> d3rlpy.base.LearnableConfig:
    """The algorithm's config: `hidden`x`hidden` MLPs for every network, like o2o's."""
    enc = d3rlpy.models.VectorEncoderFactory(hidden_units=[hidden, hidden])
    common: dict[str, Any] = dict(
        batch_size=batch, actor_encoder_factory=enc, critic_encoder_factory=enc
    )
    if algo == "sac":
        return d3rlpy.algos.SACConfig(n_critics=n_critics, **common)
    if algo == "cql":
        return d3rlpy.algos.CQLConfig(n_critics=n_critics, **common)
    if algo == "iql":
        return d3rlpy.algos.IQLConfig(value_encoder_factory=enc, **common)
    raise SystemExit(f"unknown --algo {algo}; choose sac, cql or iql")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algo", default="sac")
    parser.add_argument("--n-critics", type=int, default=2)
    parser.add_argument("--updates", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--obs-dim", type=int, default=17)
    parser.add_argument("--act-dim", type=int, default=6)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--size", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0: torch's own")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    terminals = np.zeros(args.size, np.float32)
    terminals[999::1000] = 1.0
    # d3rlpy's structlog writes its info lines to stdout: keep stdout for the one JSON line.
    with contextlib.redirect_stdout(sys.stderr):
        dataset = d3rlpy.dataset.MDPDataset(
            observations=rng.normal(size=(args.size, args.obs_dim)).astype(np.float32),
            actions=rng.uniform(-1, 1, (args.size, args.act_dim)).astype(np.float32),
            rewards=rng.normal(size=args.size).astype(np.float32),
            terminals=terminals,
        )
        algo = build(args.algo, args.n_critics, args.batch, args.hidden).create(device="cpu:0")
        algo.build_with_dataset(dataset)
        for _ in range(args.warmup):
            algo.update(dataset.sample_transition_batch(args.batch))
        start = time.perf_counter()
        for _ in range(args.updates):
            algo.update(dataset.sample_transition_batch(args.batch))
        seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "algo": args.algo,
                "n_critics": args.n_critics,
                "updates": args.updates,
                "seconds": seconds,
                "updates_per_s": args.updates / seconds,
                "torch": torch.__version__,
                "d3rlpy": d3rlpy.__version__,
                "threads": torch.get_num_threads(),
                "omp_wait_policy": os.environ["OMP_WAIT_POLICY"],
            }
        )
    )


if __name__ == "__main__":
    main()
