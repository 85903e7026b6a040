"""d3rlpy trained offline on an o2o dataset, then acting for o2o's evaluator: the peer side of
`benchmarks/offline.py`.

Runs only in the peer venv (`make bench-venv`: torch==2.13.0, d3rlpy==2.8.1). It trains
`--algo` for `--steps` updates on the transitions in `--data` (an .npz written by
benchmarks/offline.py: the same training episodes o2o gets, in the environment's units),
timing d3rlpy's own loop (`sample_transition_batch` then `update`, after `--warmup` untimed
ones), and prints one JSON line. With `--eval-interval K` it saves the model (`save_model`, not
timed) before the first update and after every K updates into `--snapshots`, so its policy can
be scored along training at the same steps as o2o's. An interrupted run resumes from its last
snapshot (see `resume`).
It then serves actions: each stdin line is a JSON list of observations, answered by one JSON
line of `algo.predict` actions; a line `{"load": STEP}` switches to the snapshot of that step
(answered by `{"loaded": STEP}`); an empty line or EOF ends it. Evaluation therefore runs in
o2o's process, on o2o's environments and reset seeds, so both libraries are scored identically.

Recipes are d3rlpy's reproduction scripts (reproductions/offline/*.py), with o2o's network
sizes and batch sizes where they differ, so that updates per second compare the same work:
- bc: deterministic MSE BC, 256x256, lr 3e-4, batch 256, standardised observations (o2o bc-det);
- td3+bc: alpha 2.5, smoothing 0.2 / 0.5, actor every 2 updates, standardised observations;
- cql: conservative weight 5 at a fixed alpha (alpha lr 0), 10 action samples, actor lr 1e-4,
  critic lr 3e-4, temperature lr 1e-4 (o2o's CQL_LOCOMOTION). Two differences no d3rlpy option
  removes: its TD target acts with the deterministic a' = tanh(mu(s')) (without soft_q_backup
  or max_q_backup), where o2o, JaxCQL and CORL sample a' from pi(.|s'); and it steps the critic
  before the actor and the temperature before the actor loss reads it, where o2o (as JaxCQL)
  takes all gradients at the parameters before the step;
- iql: expectile 0.7, temperature 3, weights clipped at 100, rewards scaled by 1000 / return
  range, actor lr cosine-decayed over 1M updates (o2o's IQL_LOCOMOTION);
- rebrac: 3x256, LayerNorm in the critics, batch 1024 (o2o's batch is passed), lr 1e-3, the
  penalties of o2o's preset for the dataset (`--betas`; CORL's, e.g. hopper-medium 0.01 / 0.01),
  raw observations (d3rlpy's reproductions/offline/rebrac.py);
- awac: lambda 1/3, 3x256, batch 256, standardised observations (o2o's CORL recipe; d3rlpy's
  reproduction uses lambda 1, 4x256, batch 1024 and actor weight decay). d3rlpy's AWAC keeps
  more of its SAC base than the references do: its critic target is SAC's,
  min Q'(s', a') - t log pi(a'|s') with a' from the tanh-squashed Gaussian and t = exp(0) = 1
  (a fixed dummy log-temperature of zero), where rlkit (`alpha=0`) and CORL have no entropy
  term. `awac-no-entropy` is d3rlpy's AWAC with that temperature set to 0: the ablation that
  tells whether the term is what separates the two libraries.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see peer_d3rlpy.py

import d3rlpy
import numpy as np
import torch
from d3rlpy.algos.utility import build_scalers_with_transition_picker
from d3rlpy.models.torch.parameters import get_parameter

ALGOS = ("bc", "td3+bc", "cql", "iql", "awac", "awac-no-entropy", "rebrac")
IQL_DECAY = 1_000_000  # the actor's cosine decay length unless --decay-steps says otherwise
REBRAC_BETAS = (0.001, 0.01)  # ReBRAC's actor and critic penalties unless --betas says otherwise


def build(
    algo: str, batch: int, decay_steps: int = IQL_DECAY, betas: tuple[float, float] = REBRAC_BETAS
) -> d3rlpy.base.LearnableConfig:
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
        schedule = (
            d3rlpy.optimizers.CosineAnnealingLRFactory(T_max=decay_steps) if decay_steps else None
        )
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
    if algo in ("awac", "awac-no-entropy"):
        return d3rlpy.algos.AWACConfig(
            batch_size=batch,
            lam=1.0 / 3.0,
            actor_encoder_factory=enc([256, 256, 256]),
            critic_encoder_factory=enc([256, 256, 256]),
            observation_scaler=standard,
        )
    if algo == "rebrac":
        return d3rlpy.algos.ReBRACConfig(
            batch_size=batch,
            actor_learning_rate=1e-3,
            critic_learning_rate=1e-3,
            actor_encoder_factory=enc([256, 256, 256]),
            critic_encoder_factory=enc([256, 256, 256], use_layer_norm=True),
            actor_beta=betas[0],
            critic_beta=betas[1],
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
    parser.add_argument("--eval-interval", type=int, default=0, help="0: no snapshots")
    parser.add_argument("--snapshots", default=None, help="folder for the snapshots")
    parser.add_argument(
        "--decay-steps",
        type=int,
        default=IQL_DECAY,
        help="IQL's actor cosine decay length (the reference's: its run's length); 0: none",
    )
    parser.add_argument(
        "--betas",
        default=",".join(map(str, REBRAC_BETAS)),
        help="ReBRAC's actor and critic penalties, ACTOR,CRITIC (o2o's preset for the dataset)",
    )
    args = parser.parse_args()
    if args.eval_interval and not args.snapshots:
        raise SystemExit("--eval-interval needs --snapshots DIR")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    d3rlpy.seed(args.seed)

    # d3rlpy's structlog writes its info lines to stdout: keep stdout for the protocol.
    with contextlib.redirect_stdout(sys.stderr):
        betas = tuple(float(b) for b in args.betas.split(","))
        dataset, algo = built(args.algo, args.data, args.batch, args.decay_steps, betas)
        for _ in range(args.warmup):
            algo.update(dataset.sample_transition_batch(args.batch))
        seconds, done, steps = 0.0, 0, snapshot_steps(args.steps, args.eval_interval)
        timeline = {0: 0.0}  # training seconds (updates only) at each snapshot
        if steps:
            os.makedirs(args.snapshots, exist_ok=True)
            done, seconds, timeline = resume(algo, args.snapshots, args.seed)
            if not done:
                save(algo, args.snapshots, 0, timeline)
        for upto in [s for s in steps if s > done] or [args.steps]:
            start = time.perf_counter()
            for _ in range(upto - done):
                algo.update(dataset.sample_transition_batch(args.batch))
            seconds, done = seconds + time.perf_counter() - start, upto
            timeline[upto] = seconds
            if steps:
                save(algo, args.snapshots, upto, timeline)
    result = {
        "algo": args.algo,
        "updates": args.steps,
        "seconds": seconds,
        "updates_per_s": args.steps / seconds,
        "d3rlpy": d3rlpy.__version__,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "snapshots": [0, *steps] if steps else [],
        "snapshot_seconds": [timeline.get(s) for s in [0, *steps]] if steps else [],
    }
    print(json.dumps(result), flush=True)
    for line in sys.stdin:
        if not line.strip():
            break
        message = json.loads(line)
        with contextlib.redirect_stdout(sys.stderr):
            if isinstance(message, dict):
                algo.load_model(snapshot(args.snapshots, message["load"]))
                reply = {"loaded": message["load"]}
            else:
                actions = algo.predict(np.asarray(message, np.float32))
                reply = np.asarray(actions, np.float64).tolist()
        print(json.dumps(reply), flush=True)


def built(
    algo_name: str,
    data: str,
    batch: int,
    decay_steps: int = IQL_DECAY,
    betas: tuple[float, float] = REBRAC_BETAS,
) -> tuple[d3rlpy.dataset.MDPDataset, Any]:
    """(the transitions in `data` as d3rlpy's dataset, `algo_name`'s algorithm built on them,
    its scalers fitted as `fit` does first)."""
    arrays = np.load(data)
    dataset = d3rlpy.dataset.MDPDataset(
        observations=arrays["observations"],
        actions=arrays["actions"],
        rewards=arrays["rewards"],
        terminals=arrays["terminals"].astype(np.float32),
        timeouts=arrays["timeouts"].astype(np.float32),
    )
    algo = build(algo_name, batch, decay_steps, betas).create(device="cpu:0")
    build_scalers_with_transition_picker(algo, dataset)
    algo.build_with_dataset(dataset)
    if algo_name == "awac-no-entropy":  # temperature exp(-inf) = 0 in SAC's target
        get_parameter(algo.impl.modules.log_temp).data.fill_(-float("inf"))
    return dataset, algo


def snapshot_steps(steps: int, interval: int) -> list[int]:
    """The update counts after which a snapshot is saved: every `interval`, and the last."""
    if interval <= 0:
        return []
    return sorted({*range(interval, steps, interval), steps})


def snapshot(folder: str, step: int) -> str:
    return os.path.join(folder, f"step_{step:08d}.d3")


PROGRESS = "progress.json"  # the last complete snapshot, the training seconds at each one


def save(algo: d3rlpy.base.LearnableBase, folder: str, step: int, timeline: dict) -> None:
    """Snapshot the model (networks and optimiser states) after `step` updates, then record
    it as the point to resume from, with the training seconds at every snapshot so far
    (`timeline`); both files are replaced whole."""
    path = snapshot(folder, step)
    algo.save_model(path + ".tmp")
    os.replace(path + ".tmp", path)
    with open(os.path.join(folder, PROGRESS + ".tmp"), "w") as f:
        json.dump({"step": step, "seconds": timeline[step], "timeline": timeline}, f)
    os.replace(os.path.join(folder, PROGRESS + ".tmp"), os.path.join(folder, PROGRESS))


def resume(algo: d3rlpy.base.LearnableBase, folder: str, seed: int) -> tuple[int, float, dict]:
    """Continue an interrupted run from its last snapshot: (updates done, seconds so far, the
    seconds at each snapshot), or (0, 0.0, {0: 0.0}) when there is none. The model and
    optimiser states are restored exactly; batch sampling restarts from a seed derived from
    (seed, step), so a resumed run is a valid run of the same recipe but not the same draws as
    an uninterrupted one."""
    path = os.path.join(folder, PROGRESS)
    if not os.path.exists(path):
        return 0, 0.0, {0: 0.0}
    with open(path) as f:
        progress = json.load(f)
    step = progress["step"]
    algo.load_model(snapshot(folder, step))
    algo.set_grad_step(step)
    d3rlpy.seed(int(np.random.SeedSequence([seed, step]).generate_state(1)[0]))
    print(f"resumed from {snapshot(folder, step)}", file=sys.stderr)
    timeline = {int(k): v for k, v in progress.get("timeline", {}).items()}
    return step, progress["seconds"], {0: 0.0} | timeline | {step: progress["seconds"]}


if __name__ == "__main__":
    main()
