"""Train the behaviour-policy zoo with o2o's own SAC, then pick and ship its policies.

    python scripts/train_zoo.py train  --tasks hopper walker2d --steps 200000
    python scripts/train_zoo.py select --tasks hopper walker2d
    python scripts/train_zoo.py train  --tasks hopper --steps 1000000 --recipe sac --seed 1
    python scripts/train_zoo.py select --tasks hopper --recipe sac --seed 1 --levels expert

`train` runs SAC with `RLPD_2` (`sac`'s defaults when the zoo was made) per task, keeping the
policy at every evaluation; re-running it resumes. `select` rolls out those snapshots with
sampled actions (as datasets are collected), and writes to assets/: `TASK-expert.npz` (the
best snapshot), `TASK-medium.npz` (D4RL's medium recipe: early-stopped near one third of the
D4RL expert return) and
`TASK-medium-replay.npz` (the run's snapshots every 10k steps up to the medium one, from which
`o2o dataset make TASK-medium-replay` re-collects the replay buffer; see o2o/data/generate.py).
`--levels expert` replaces the expert only, so the medium data and every result measured on it
stay as they are; `--recipe sac` trains with `sac`'s defaults (textbook SAC, which learns the
locomotion tasks faster than `RLPD_2`), for experts that approach D4RL's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from o2o.agents.sac import RLPD_2
from o2o.data.generate import SampledActions, replay_path, rollout
from o2o.envs.tasks import Task, get_task
from o2o.report.tables import markdown_table
from o2o.train.pipeline import default_config, train
from o2o.zoo import (
    ZOO_LEVELS,
    load_policy,
    save_policy,
    save_policy_chain,
    zoo_dir,
    zoo_policy,
)

RUNS = Path("runs") / "zoo"
EVAL_INTERVAL = 5000
EVAL_EPISODES = 5
ROLLOUT_STEPS, ROLLOUT_ENVS = 10_000, 10  # sampled-action rollouts that rank snapshots
CHAIN_INTERVAL = 10_000  # snapshot spacing of the medium-replay chain
POLICY_KEYS = ("task", "env_id", "hidden_dims", "observation_dim", "action_dim", "run_dir")
RECIPES = ("rlpd2", "sac")  # RLPD_2: the shipped zoo's (`sac`'s former defaults); `sac`'s own


def run_dir(task: str, seed: int, recipe: str = "rlpd2") -> Path:
    return RUNS / (
        f"{task}-sac-seed{seed}" if recipe == "rlpd2" else f"{task}-textbook-sac-seed{seed}"
    )


def train_task(task: str, steps: int, seed: int, recipe: str = "rlpd2") -> Path:
    config = default_config(
        "sac",
        **({"agent": RLPD_2} if recipe == "rlpd2" else {}),
        task=task,
        online_steps=steps,
        seed=seed,
        out=run_dir(task, seed, recipe),
        eval_interval=EVAL_INTERVAL,
        eval_episodes=EVAL_EPISODES,
        save_policies=True,
    )
    return train(config)


def _snapshots(task: str, seed: int, recipe: str) -> list[tuple[Path, dict]]:
    paths = sorted((run_dir(task, seed, recipe) / "policies").glob("step_*.npz"))
    if not paths:
        raise SystemExit(f"no snapshots in {run_dir(task, seed, recipe)}; run `train` first")
    return [(p, load_policy(p).meta) for p in paths]


def sampled_return(task: Task, path: Path, seed: int) -> dict:
    """Return statistics of a policy's sampled-action rollouts (exactly how data is made)."""
    data = rollout(
        task,
        SampledActions(load_policy(path)),
        ROLLOUT_STEPS,
        seed,
        f"{path.name} rollouts",
        ROLLOUT_ENVS,
    )
    stats = data.summary()
    return {
        "rollout_return_mean": stats["return_mean"],
        "rollout_return_std": stats["return_std"],
        "rollout_episodes": stats["complete_episodes"],
        "rollout_normalized_score": task.normalize(stats["return_mean"]),
    }


def select_task(
    task_name: str, seed: int, candidates: int, recipe: str = "rlpd2", levels=ZOO_LEVELS
) -> list[dict]:
    """Pick the `levels`' snapshots (random, medium, expert) and ship them, with the medium
    replay buffer when medium is among them."""
    task = get_task(task_name)
    if not task.reward_transform.is_identity:
        raise SystemExit(f"{task.name}: the replay export assumes untransformed rewards")
    snaps = _snapshots(task_name, seed, recipe)
    chosen = {}
    if "random" in levels:
        chosen["random"] = (snaps[0][0], sampled_return(task, snaps[0][0], seed))
    if "medium" in levels:
        paths = _medium_candidates(task, snaps, candidates)
        chosen["medium"] = _best(task, paths, seed, key=_medium_gap(task))
    if "expert" in levels:
        by_eval = sorted(snaps, key=lambda s: -s[1]["eval_return_mean"])
        chosen["expert"] = _best(task, [p for p, _ in by_eval[:candidates]], seed, lambda r: -r)
    command = f"python scripts/train_zoo.py train --tasks {task_name} --steps N --seed {seed}" + (
        f" --recipe {recipe}" if recipe != "rlpd2" else ""
    )
    rows = []
    for level, (path, stats) in chosen.items():
        policy = load_policy(path)
        meta = policy.meta | stats | {"level": level, "trained_by": command}
        save_policy(zoo_policy(task_name, level), policy.params, meta)
        rows.append({"policy": f"{task_name}-{level}"} | meta)
    if "medium" not in chosen:
        return rows
    medium_steps = load_policy(chosen["medium"][0]).meta["env_steps"]
    chain = [
        (path, meta)
        for path, meta in snaps
        if meta["env_steps"] <= medium_steps and meta["env_steps"] % CHAIN_INTERVAL == 0
    ]
    config = json.loads((run_dir(task_name, seed, recipe) / "config.json").read_text())
    save_policy_chain(
        replay_path(task_name),
        [load_policy(path).params for path, _ in chain],
        [meta["env_steps"] for _, meta in chain],
        {key: chain[0][1][key] for key in POLICY_KEYS}
        | {
            "level": "medium-replay",
            "buffer_size": medium_steps,
            "start_steps": config["agent"]["start_steps"],
            "trained_by": command,
        },
    )
    return rows


def _medium_gap(task: Task):
    target = task.expert_return / 3  # D4RL: medium is about one third of expert
    return lambda r: abs(r - target)


def _medium_candidates(task: Task, snaps: list[tuple[Path, dict]], candidates: int) -> list[Path]:
    """D4RL early-stops the medium run once it reaches about a third of expert return: the
    first snapshot evaluated at 90% of that or more, and the next ones (the medium-replay
    buffer is the run up to the chosen one, so later picks would fill it with better data)."""
    gap = _medium_gap(task)
    threshold = 0.9 * task.expert_return / 3
    first = next((i for i, (_, m) in enumerate(snaps) if m["eval_return_mean"] >= threshold), None)
    if first is None:  # never got there: the snapshots evaluated nearest to it
        near = sorted(snaps, key=lambda s: gap(s[1]["eval_return_mean"]))
        return [p for p, _ in near[:candidates]]
    return [p for p, _ in snaps[first : first + candidates]]


def _best(task: Task, paths: list[Path], seed: int, key) -> tuple[Path, dict]:
    """The candidate whose sampled-action return minimises `key(return)`."""
    scored = [(p, sampled_return(task, p, seed)) for p in paths]
    return min(scored, key=lambda ps: key(ps[1]["rollout_return_mean"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["train", "select"])
    parser.add_argument("--tasks", nargs="+", default=["hopper", "halfcheetah", "walker2d", "ant"])
    parser.add_argument("--steps", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--candidates", type=int, default=4, help="snapshots rolled out per pick")
    parser.add_argument("--recipe", choices=RECIPES, default="rlpd2", help="SAC's settings")
    parser.add_argument(
        "--levels", nargs="+", choices=ZOO_LEVELS, default=list(ZOO_LEVELS), help="select these"
    )
    args = parser.parse_args()
    rows: list[dict] = []
    for task in args.tasks:
        if args.command == "train":
            train_task(task, args.steps, args.seed, args.recipe)
        else:
            rows += select_task(task, args.seed, args.candidates, args.recipe, args.levels)
    if rows:
        write_table(rows)


def write_table(rows: list[dict]) -> None:
    """assets/policies/policies.{json,md}: the shipped policies (merged with earlier rows)."""
    path = zoo_dir() / "policies.json"
    old = {r["policy"]: r for r in json.loads(path.read_text())} if path.exists() else {}
    merged = sorted((old | {r["policy"]: r for r in rows}).values(), key=lambda r: r["policy"])
    path.write_text(json.dumps(merged, indent=1))
    columns = {
        "policy": "policy",
        "env_steps": "SAC steps",
        "rollout_return_mean": "return (sampled)",
        "rollout_return_std": "std",
        "rollout_normalized_score": "normalised",
        "eval_return_mean": "return (deterministic)",
        "eval_normalized_score": "normalised",
    }
    (zoo_dir() / "policies.md").write_text(markdown_table(merged, columns))


if __name__ == "__main__":
    main()
