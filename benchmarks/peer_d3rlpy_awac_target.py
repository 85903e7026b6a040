"""The entropy term in d3rlpy's AWAC critic target, measured: the peer side of
`benchmarks/awac_probe.py`.

Runs only in the peer venv (`make bench-venv`). d3rlpy's AWACImpl inherits SACImpl's
`compute_target`, min_j Q'_j(s', a') - t log pi(a'|s') with a' from the tanh-squashed Gaussian
and t = exp(log_temp), where AWAC's log_temp is a fixed dummy parameter of 0, so t = 1. This
trains `--algo` (awac or awac-no-entropy, benchmarks/peer_d3rlpy_offline.py's recipes) on
`--data` and, every `--every` updates, prints one JSON line of means over a batch: the target
d3rlpy computes, min_j Q'_j(s', a') at the same draw, and t log pi(a'|s'), beside the mean
reward.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

import d3rlpy
import torch
from d3rlpy.models.torch import build_squashed_gaussian_distribution
from d3rlpy.models.torch.parameters import get_parameter
from d3rlpy.torch_utility import TorchMiniBatch
from peer_d3rlpy_offline import built

torch.set_num_threads(1)


def probe(algo: d3rlpy.algos.AWAC, batch: TorchMiniBatch) -> dict[str, float]:
    """Means over `batch` of SACImpl's target and its two parts, from one shared draw."""
    impl = algo.impl
    with torch.no_grad():
        dist = build_squashed_gaussian_distribution(impl.modules.policy(batch.next_observations))
        state = torch.get_rng_state()
        action, log_prob = dist.sample_with_log_prob()
        torch.set_rng_state(state)  # the target below draws the same a'
        target = impl.compute_target(batch)
        q = impl._targ_q_func_forwarder.compute_target(
            batch.next_observations, action, reduction="min"
        )
        term = get_parameter(impl.modules.log_temp).exp() * log_prob
    return {
        "target": float(target.mean()),
        "min_q_next": float(q.mean()),
        "entropy_term": float(term.mean()),
        "reward": float(batch.rewards.mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algo", default="awac", choices=("awac", "awac-no-entropy"))
    parser.add_argument("--data", required=True, help=".npz written by benchmarks/offline.py")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--every", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    d3rlpy.seed(args.seed)
    with contextlib.redirect_stdout(sys.stderr):  # d3rlpy logs to stdout
        dataset, algo = built(args.algo, args.data, 256)
    for step in range(args.steps + 1):
        if step % args.every == 0:
            batch = TorchMiniBatch.from_batch(
                dataset.sample_transition_batch(1024),
                gamma=0.99,
                compute_returns_to_go=False,
                device="cpu:0",
                observation_scaler=algo.observation_scaler,
            )
            print(json.dumps({"algo": args.algo, "step": step, **probe(algo, batch)}), flush=True)
        if step < args.steps:
            algo.update(dataset.sample_transition_batch(256))


if __name__ == "__main__":
    main()
