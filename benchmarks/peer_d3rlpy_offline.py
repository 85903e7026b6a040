"""d3rlpy trained offline on an o2o dataset, then acting for o2o's evaluator: the peer side of
`benchmarks/offline.py`.

Runs only in the peer venv (`make bench-venv`: torch==2.13.0, d3rlpy==2.8.1). It trains
`--algo` for `--steps` updates on the transitions in `--data` (an .npz written by
benchmarks/offline.py: the same training episodes o2o gets, in the environment's units),
timing d3rlpy's own loop (`sample_transition_batch` then `update`, after `--warmup` untimed
ones), and prints one JSON line.
It then serves actions: each stdin line is a JSON list of observations, answered by one JSON
line of `algo.predict` actions; an empty line or EOF ends it. Evaluation therefore runs in o2o's
process, on o2o's environments and reset seeds, so both libraries are scored identically.

Recipes are d3rlpy's reproduction scripts (reproductions/offline/*.py), with o2o's network
sizes and batch sizes where they differ, so that updates per second compare the same work:
- bc: deterministic MSE BC, 256x256, lr 3e-4, batch 256, standardised observations (o2o bc-det);
- td3+bc: alpha 2.5, smoothing 0.2 / 0.5, actor every 2 updates, standardised observations;
- cql: conservative weight 5 at a fixed alpha (alpha lr 0), 10 action samples, actor lr 1e-4,
  critic lr 3e-4, temperature lr 1e-4 (o2o's CQL_LOCOMOTION);
- iql: expectile 0.7, temperature 3, weights clipped at 100, rewards scaled by 1000 / return
  range, actor lr cosine-decayed over 1M updates (o2o's IQL_LOCOMOTION);
- awac: lambda 1/3, 3x256, batch 256, standardised observations (o2o's CORL recipe; d3rlpy's
  reproduction uses lambda 1, 4x256, batch 1024 and actor weight decay).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see peer_d3rlpy.py

import d3rlpy
import numpy as np
import torch
from d3rlpy.algos.utility import build_scalers_with_transition_picker

ALGOS = ("bc", "td3+bc", "cql", "iql", "awac")


def build(algo: str, batch: int) -> d3rlpy.base.LearnableConfig:
    """The d3rlpy config for `algo` (see the module docstring)."""
    enc = d3rlpy.models.VectorEncoderFactory
    standard = d3rlpy.preprocessing.StandardObservationScaler()
    if algo == "bc":
        return d3rlpy.algos.BCConfig(
            batch_size=batch,
            learning_rate=3e-4,
            encoder_factory=enc([256, 256]),
            observation_scaler=standard,
        )
    if algo == "td3+bc":
        return d3rlpy.algos.TD3PlusBCConfig(
            batch_size=batch,
            actor_learning_rate=3e-4,
            critic_learning_rate=3e-4,
            target_smoothing_sigma=0.2,
            target_smoothing_clip=0.5,
            alpha=2.5,
            update_actor_interval=2,
            observation_scaler=standard,
        )
    if algo == "cql":
        return d3rlpy.algos.CQLConfig(
            batch_size=batch,
            actor_learning_rate=1e-4,
            critic_learning_rate=3e-4,
            temp_learning_rate=1e-4,
            alpha_learning_rate=0.0,
            conservative_weight=5.0,
            n_action_samples=10,
            actor_encoder_factory=enc([256, 256]),
            critic_encoder_factory=enc([256, 256]),
        )
    if algo == "iql":
        schedule = d3rlpy.optimizers.CosineAnnealingLRFactory(T_max=1_000_000)
        return d3rlpy.algos.IQLConfig(
            batch_size=batch,
            actor_learning_rate=3e-4,
            critic_learning_rate=3e-4,
            expectile=0.7,
            weight_temp=3.0,
            max_weight=100.0,
            reward_scaler=d3rlpy.preprocessing.ReturnBasedRewardScaler(multiplier=1000.0),
            actor_optim_factory=d3rlpy.optimizers.AdamFactory(lr_scheduler_factory=schedule),
        )
    if algo == "awac":
        return d3rlpy.algos.AWACConfig(
            batch_size=batch,
            lam=1.0 / 3.0,
            actor_encoder_factory=enc([256, 256, 256]),
            critic_encoder_factory=enc([256, 256, 256]),
            observation_scaler=standard,
        )
    raise SystemExit(f"unknown --algo {algo}; choose one of {', '.join(ALGOS)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algo", required=True, choices=ALGOS)
    parser.add_argument("--data", required=True, help=".npz of the training transitions")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--warmup", type=int, default=0, help="untimed updates first")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="torch threads; 0: torch's own")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    d3rlpy.seed(args.seed)

    arrays = np.load(args.data)
    # d3rlpy's structlog writes its info lines to stdout: keep stdout for the protocol.
    with contextlib.redirect_stdout(sys.stderr):
        dataset = d3rlpy.dataset.MDPDataset(
            observations=arrays["observations"],
            actions=arrays["actions"],
            rewards=arrays["rewards"],
            terminals=arrays["terminals"].astype(np.float32),
            timeouts=arrays["timeouts"].astype(np.float32),
        )
        algo = build(args.algo, args.batch).create(device="cpu:0")
        build_scalers_with_transition_picker(algo, dataset)  # as `fit` does first
        algo.build_with_dataset(dataset)
        for _ in range(args.warmup):
            algo.update(dataset.sample_transition_batch(args.batch))
        start = time.perf_counter()
        for _ in range(args.steps):
            algo.update(dataset.sample_transition_batch(args.batch))
        seconds = time.perf_counter() - start
    result = {
        "algo": args.algo,
        "updates": args.steps,
        "seconds": seconds,
        "updates_per_s": args.steps / seconds,
        "d3rlpy": d3rlpy.__version__,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(result), flush=True)
    for line in sys.stdin:
        if not line.strip():
            break
        observations = np.asarray(json.loads(line), np.float32)
        with contextlib.redirect_stdout(sys.stderr):
            actions = algo.predict(observations)
        print(json.dumps(np.asarray(actions, np.float64).tolist()), flush=True)


if __name__ == "__main__":
    main()
