"""End-to-end runs through the CLI: outputs, resume without repeating warm-up, bad input."""

import dataclasses
import json
import shutil
import signal
import subprocess
import sys

import flax.struct
import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from agent_helpers import hopper_dataset, random_batch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from o2o import cli
from o2o.agents.base import switch_parts, trained_parts
from o2o.agents.sac import SAC, SACConfig
from o2o.cli import main
from o2o.data.dataset import Dataset, discounted_returns
from o2o.data.formats import load_native, save_native
from o2o.envs.tasks import RewardTransform, get_task
from o2o.logging import read_episodes, read_metrics
from o2o.train.evaluate import Evaluator
from o2o.train.pipeline import load_config, replay_transitions, train, trained_agent

SPACES = (
    gym.spaces.Box(-np.inf, np.inf, (3,), np.float32),
    gym.spaces.Box(-1.0, 1.0, (2,), np.float32),
)
update = jax.jit(SAC.update)
TINY = "--agent.hidden-dims 16 16 --agent.batch-size 16 --eval-episodes 2"
METRIC_KEYS = (
    "normalized_score",
    "return_mean",
    "return_std",
    "q_pred_mean",
    "q_mc_mean",
    "q_bias",
    "updates_per_s",
    "wall_s",
    "phase",
)


def run(flags: str) -> None:
    """`o2o train FLAGS` with tiny networks (paths in FLAGS must hold no spaces)."""
    main(["train", *flags.split(), *TINY.split()])


def summary(out) -> dict:
    return json.loads((out / "summary.json").read_text())


def test_sac_run_writes_outputs(tmp_path):
    out = tmp_path / "run"
    run(
        f"--algo sac --task hopper --online-steps 60 --eval-interval 30 "
        f"--agent.start-steps 20 --out {out}"
    )
    config = json.loads((out / "config.json").read_text())
    assert config["algo"] == "sac" and config["agent"]["num_critics"] == 2
    records = read_metrics(out)
    assert [r["env_steps"] for r in records] == [0, 30, 60]
    assert all(key in records[-1] for key in METRIC_KEYS)
    assert summary(out)["env_steps"] == 60 and summary(out)["updates"] == 40
    assert list((out / "tb").iterdir()), "TensorBoard events missing"
    assert (out / "checkpoints" / "latest" / "state.npz").exists()


def test_resume_continues_without_repeating_warmup(tmp_path):
    out = tmp_path / "run"
    flags = (
        f"--algo rlpd --task hopper --eval-interval 25 --agent.utd-ratio 2 "
        f"--agent.num-critics 3 --agent.start-steps 40 --out {out}"
    )
    run(f"{flags} --online-steps 50")
    assert summary(out)["updates"] == (50 - 40) * 2
    # Extend the same run: it resumes at step 50, past the warm-up, so every new step updates.
    run(f"{flags} --online-steps 100")
    assert summary(out)["env_steps"] == 100
    assert summary(out)["updates"] == (100 - 40) * 2
    steps = [r["env_steps"] for r in read_metrics(out)]
    assert steps == [0, 25, 50, 75, 100]  # no evaluation repeated or lost


def test_resume_refuses_different_config(tmp_path):
    out = tmp_path / "run"
    flags = f"--algo sac --online-steps 10 --eval-interval 10 --agent.start-steps 5 --out {out}"
    run(flags)
    with pytest.raises(SystemExit) as info:
        run(f"{flags} --seed 1")
    assert info.value.code == 2
    config = load_config(out)
    with pytest.raises(ValueError, match=r"agent\.tau \(saved 0\.005, now 0\.01\)"):
        train(dataclasses.replace(config, agent=dataclasses.replace(config.agent, tau=0.01)))


def test_offline_run_extends_online_with_another_offline_ratio(tmp_path):
    """The offline phase never mixed batches, so its saved offline_ratio does not bind the
    extension; once online steps used one, a different ratio is refused."""
    out, path = tmp_path / "run", hopper_dataset(tmp_path)
    flags = f"--algo iql --task hopper --dataset {path} --offline-steps 4 --eval-interval 4 {TINY}"
    run(f"{flags} --online-steps 0 --out {out}")
    run(f"{flags} --online-steps 6 --agent.offline-ratio 0.25 --out {out}")
    assert summary(out)["env_steps"] == 6 and load_config(out).agent.offline_ratio == 0.25
    config = load_config(out)
    agent = dataclasses.replace(config.agent, offline_ratio=0.5)
    with pytest.raises(ValueError, match=r"agent\.offline_ratio \(saved 0\.25, now 0\.5\)"):
        train(dataclasses.replace(config, agent=agent))


def test_cpu_evaluation_matches_the_default_here_and_may_change_on_resume(tmp_path):
    """--eval-device cpu acts through the same functions (on this CPU, the same numbers); a run
    resumes with another eval device, since it says where evaluations act, not what they are."""
    path = hopper_dataset(tmp_path)
    flags = f"--algo iql --task hopper --dataset {path} --offline-steps 4 --eval-interval 2"
    cpu, default = tmp_path / "cpu", tmp_path / "default"
    run(f"{flags} --online-steps 0 --eval-device cpu --out {cpu}")
    run(f"{flags} --online-steps 0 --out {default}")
    assert load_config(cpu).eval_device == "cpu"
    keys = ("return_mean", "q_pred_mean", "q_bias", "holdout_q_bias")
    for a, b in zip(read_metrics(cpu), read_metrics(default), strict=True):
        assert {k: a[k] for k in keys} == {k: b[k] for k in keys}
    run(f"{flags} --online-steps 4 --eval-device default --out {cpu}")
    assert summary(cpu)["env_steps"] == 4


def test_resume_accepts_run_from_before_a_field_existed(tmp_path):
    """A run written before a config field or counter was added resumes with its default."""
    out = tmp_path / "run"
    flags = f"--algo sac --eval-interval 10 --agent.start-steps 5 --out {out}"
    run(f"{flags} --online-steps 10")
    config = json.loads((out / "config.json").read_text())
    del config["agent"]["actor_q"]
    (out / "config.json").write_text(json.dumps(config))
    progress_path = out / "checkpoints" / "latest" / "progress.json"
    progress = json.loads(progress_path.read_text())
    del progress["buffer_capacity"]
    progress_path.write_text(json.dumps(progress))
    run(f"{flags} --online-steps 20")
    assert summary(out)["env_steps"] == 20


def test_rlpd_mixes_offline_dataset(tmp_path):
    path, out = hopper_dataset(tmp_path), tmp_path / "run"
    run(
        f"--algo rlpd --task hopper --dataset {path} --online-steps 30 --eval-interval 30 "
        f"--agent.start-steps 10 --agent.utd-ratio 2 --agent.num-critics 3 --out {out}"
    )
    assert summary(out)["updates"] == 40


def test_dataset_with_wrong_action_range_is_rejected(tmp_path, capsys):
    data = {
        "observations": np.zeros((5, 11), np.float32),
        "actions": np.full((5, 3), 2.0, np.float32),
        "rewards": np.zeros(5, np.float32),
        "next_observations": np.zeros((5, 11), np.float32),
        "terminals": np.zeros(5, bool),
    }
    path = save_native(Dataset.from_arrays(data), tmp_path / "wide.npz")
    with pytest.raises(SystemExit):
        run(f"--algo rlpd --dataset {path} --out {tmp_path / 'r'}")
    err = capsys.readouterr().err
    assert "wide.npz" in err and "'actions'" in err and "outside the action space" in err
    assert not (tmp_path / "r" / "config.json").exists()  # it would block the fixed command


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--algo", "nope"], "unknown algorithm 'nope'"),
        (["--algo", "sac", "--task", "marsrover"], "unknown task 'marsrover'"),
        (["--algo", "qc", "--save-policies"], "qc's actor is not one: drop --save-policies"),
    ],
)
def test_unknown_names_give_clear_errors(args, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["train", *args, "--out", str(tmp_path / "r")])
    assert message in str(info.value) + capsys.readouterr().err


def test_demo_smoke(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("O2O_DATA_DIR", str(tmp_path / "data"))
    out = tmp_path / "demo"
    flags = "--dataset-size 3000 --offline-steps 20 --online-steps 30 --eval-interval 10"
    tiny = "--hidden 8 8 --rlpd-start-steps 25 --eval-episodes 2"
    main(["demo", "--pretrain", *flags.split(), *tiny.split(), "--out", str(out)])
    assert str(out / "report" / "report.html") in capsys.readouterr().out
    for algo in ("cql", "calql"):
        assert summary(out / algo)["offline_updates"] == 20 and "dip" in summary(out / algo)
    assert summary(out / "rlpd")["updates"] == (30 - 25) * 20
    table = (out / "report" / "report.md").read_text()
    assert all(f"| {algo} | 1 |" in table for algo in ("cql", "calql", "rlpd"))


def test_top_level_usage(capsys):
    main([])
    assert "o2o train" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:
        main(["fly"])
    assert stop.value.code == 2 and "unknown command 'fly'" in capsys.readouterr().err


def test_restart_without_checkpoint_starts_fresh_metrics(tmp_path, capsys):
    """A run that died before its first checkpoint restarts cleanly, without stale records.
    Flags without effect in the configuration are said (and kept)."""
    out = tmp_path / "run"
    flags = f"--algo sac --online-steps 10 --eval-interval 10 --agent.start-steps 5 --out {out}"
    run(f"{flags} --freeze actor --dataset-size 100")
    err = capsys.readouterr().err
    assert "--freeze has no effect" in err and "--dataset-size has no effect" in err
    shutil.rmtree(out / "checkpoints")
    run(f"{flags} --freeze actor --dataset-size 100")
    assert [r["env_steps"] for r in read_metrics(out)] == [0, 10]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ("--eval-interval 0", "--eval-interval 0: must be at least 1"),
        ("--task hopper-medium --dataset-size 0", "--dataset-size 0: give at least 1"),
        ("--online-steps 0", "the run has no phase"),
        ("--offline-steps -5", "--offline-steps -5: must not be negative"),
        ("--agent.hidden-dims 0 0", "--agent.hidden-dims 0 0: give one or more widths"),
        ("--agent.discount 1.5", "--agent.discount 1.5: must lie in (0, 1]"),
        ("--agent.critic-lr -1", "--agent.critic-lr -1.0: a learning rate must be positive"),
        ("--seeds -1", "--seeds: -1: give at least 0"),
    ],
)
def test_invalid_values_are_refused_before_anything_runs(flags, message, tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as stop:
        main(["train", "--algo", "sac", *flags.split(), "--out", str(out)])
    err = " ".join(capsys.readouterr().err.replace("│", " ").split())  # tyro's box, unwrapped
    assert stop.value.code == 2 and message in err and "Traceback" not in err
    assert not out.exists()


def test_an_out_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "taken").write_text("mine")
    with pytest.raises(SystemExit) as stop:
        main(["train", "--out", str(tmp_path / "taken")])
    err = " ".join(capsys.readouterr().err.replace("│", " ").split())  # tyro's box, unwrapped
    assert stop.value.code == 2 and "is a file" in err
    assert (tmp_path / "taken").read_text() == "mine"


def test_ctrl_c_saves_a_checkpoint_and_the_same_command_resumes(tmp_path, monkeypatch, capsys):
    """Ctrl-C in either phase stops at the next step boundary with a checkpoint there (exit
    status 130, no traceback); the same command then ends with the records of an
    uninterrupted run (`test_lost_checkpoints_lose_no_records`: [0, 10, 20, 20, 30])."""
    from o2o.train import offline, online

    out = tmp_path / "run"
    flags = f"{FINE_TUNE} --dataset {hopper_dataset(tmp_path)} --out {out}"
    monkeypatch.setattr(offline, "CHUNK", 5)
    update_chunk, calls = offline._update_chunk, []

    def ctrl_c_in_the_third_chunk(*args, **kwargs):  # updates 10 -> 15
        calls.append(1)
        if len(calls) == 3:
            signal.raise_signal(signal.SIGINT)
        return update_chunk(*args, **kwargs)

    monkeypatch.setattr(offline, "_update_chunk", ctrl_c_in_the_third_chunk)
    with pytest.raises(SystemExit) as stop:
        run(flags)
    assert stop.value.code == 130 and "offline update 15" in capsys.readouterr().err
    progress = json.loads((out / "checkpoints" / "offline" / "progress.json").read_text())
    assert progress["updates"] == 15 and [r["step"] for r in read_metrics(out)] == [0, 10]

    monkeypatch.setattr(offline, "_update_chunk", update_chunk)
    online_step = online.OnlineLoop._step

    def ctrl_c_at_step_4(self):
        online_step(self)
        if self.progress.env_steps == 4:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(online.OnlineLoop, "_step", ctrl_c_at_step_4)
    with pytest.raises(SystemExit) as stop:
        run(flags)
    assert stop.value.code == 130 and "online step 4" in capsys.readouterr().err
    monkeypatch.setattr(online.OnlineLoop, "_step", online_step)
    run(flags)
    assert [r["step"] for r in read_metrics(out)] == [0, 10, 20, 20, 30]
    assert summary(out)["env_steps"] == 10 and summary(out)["offline_updates"] == 20


def test_offline_then_online_share_one_step_axis_and_resume(tmp_path):
    out, path = tmp_path / "run", hopper_dataset(tmp_path)
    flags = (
        f"--algo sac --task hopper --dataset {path} --offline-steps 60 --eval-interval 30 "
        f"--agent.start-steps 5 --out {out}"
    )
    run(f"{flags} --online-steps 0")
    records = read_metrics(out)
    assert [(r["phase"], r["step"]) for r in records] == [
        ("offline", 0),
        ("offline", 30),
        ("offline", 60),
    ]
    assert summary(out)["offline_updates"] == 60 and "final_score" not in summary(out)
    assert np.isfinite(records[-1]["train/critic_loss"])
    # Extending the run online keeps the offline phase (done: not repeated) and its records.
    run(f"{flags} --online-steps 30")
    records = read_metrics(out)
    assert [(r["phase"], r["step"], r["env_steps"]) for r in records[3:]] == [
        ("online", 60, 0),
        ("online", 90, 30),
    ]
    assert records[3]["return_mean"] == records[2]["return_mean"]  # the offline agent, evaluated
    assert summary(out)["offline_updates"] == 60 and summary(out)["updates"] == 25
    # Fine-tuning metrics in the summary, and the report over the run.
    scores = [r["normalized_score"] for r in records]
    assert summary(out)["offline_score"] == scores[2]
    assert summary(out)["dip"] == 0.0  # the first quarter of 30 steps holds only step 0
    # Regret from the online training episodes (Hopper with a barely trained policy falls).
    episodes = read_episodes(out)
    assert episodes and all(e["step"] == 60 + e["env_steps"] for e in episodes)
    task = get_task("hopper")
    assert all(e["score"] == pytest.approx(task.normalize(e["return"])) for e in episodes)
    expected = np.mean([1 - np.clip(e["score"], 0, 100) / 100 for e in episodes])
    assert summary(out)["regret"] == pytest.approx(expected)
    main(["report", str(out)])
    page = (out / "report" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2  # score and Q bias (no held-out data)
    table = (out / "report" / "report.md").read_text()
    assert "| sac | 1 |" in table and "score at switch" in table and "regret" in table


def test_rebrac_without_an_offline_phase_says_which_critic_penalty(tmp_path, capsys):
    """ReBRAC's critic penalty changes at the switch: with no offline phase the run was never
    switched and crashed at its first update, asking for the dataset's next actions."""
    out = tmp_path / "r"
    with pytest.raises(SystemExit):
        run(f"--algo rebrac --task hopper --online-steps 8 --out {out}")
    assert "--agent.critic-bc 0 to train online" in capsys.readouterr().err
    run(
        f"--algo rebrac --task hopper --online-steps 8 --agent.start-steps 4 "
        f"--agent.critic-bc 0 --out {out}"
    )
    assert summary(out)["env_steps"] == 8


def test_offline_steps_without_data_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run(f"--algo sac --task hopper --offline-steps 10 --out {tmp_path / 'r'}")
    assert "needs offline data" in capsys.readouterr().err


def test_on_policy_run_evaluates_after_crossing_intervals_and_resumes(tmp_path, capsys):
    """FPO: iterations of 3 environments x 11 steps, in 2 minibatches of 16 (TINY); an
    evaluation after each iteration that crosses a multiple of 30 steps; extending the run
    resumes at its last iteration."""
    out, path = tmp_path / "run", hopper_dataset(tmp_path)
    flags = (
        f"--algo fpo --task hopper --dataset {path} --offline-steps 10 --eval-interval 30 "
        f"--agent.num-envs 3 --agent.rollout-length 11 --out {out}"
    )
    run(f"{flags} --online-steps 66")
    online = [r for r in read_metrics(out) if r["phase"] == "online"]
    assert [r["env_steps"] for r in online] == [0, 33, 66]
    assert summary(out)["updates"] == 2 * 10 * 2  # 2 iterations x 10 epochs x 2 minibatches
    run(f"{flags} --online-steps 99")
    online = [r for r in read_metrics(out) if r["phase"] == "online"]
    assert [r["env_steps"] for r in online] == [0, 33, 66, 99]
    assert summary(out)["env_steps"] == 99 and summary(out)["updates"] == 3 * 10 * 2
    with pytest.raises(ValueError, match="on-policy; it keeps no replay buffer"):
        replay_transitions(out)
    with pytest.raises(SystemExit):
        run(f"{flags} --online-steps 99 --data-mix proportional")
    assert "fpo is on-policy" in capsys.readouterr().err


def test_iql_scales_rewards_by_the_dataset_return_range_offline_and_online(tmp_path):
    # Two episodes (a terminal at row 99) with returns 100 * 0.5 and 100 * 2.5: span 200.
    n = 200
    rng = np.random.default_rng(0)
    states = rng.normal(size=(n + 1, 11)).astype(np.float32)  # one continuous stream
    data = {
        "observations": states[:-1],
        "actions": rng.uniform(-1, 1, (n, 3)).astype(np.float32),
        "rewards": np.repeat([0.5, 2.5], 100).astype(np.float32),
        "next_observations": states[1:],
        "terminals": np.arange(n) == 99,
    }
    path = save_native(Dataset.from_arrays(data), tmp_path / "hopper.npz")
    out = tmp_path / "run"
    run(
        f"--algo iql --task hopper --dataset {path} --offline-steps 10 --online-steps 10 "
        f"--eval-interval 10 --out {out}"
    )
    scale = json.loads((out / "transforms.json").read_text())["reward_transform"]["scale"]
    np.testing.assert_allclose(scale, 1000 / 200, rtol=1e-6)
    seen = replay_transitions(out)["rewards"]  # online rewards, in the agent's units
    main(["dataset", "from-run", str(out), str(tmp_path / "online.npz")])
    exported, _ = load_native(tmp_path / "online.npz")
    np.testing.assert_allclose(seen, scale * exported.rewards, rtol=1e-5)
    assert np.abs(exported.rewards).max() < 10  # Hopper's own reward scale


def test_reward_scale_applies_online_without_a_dataset(tmp_path, capsys):
    """An agent's constant reward scale needs no data, so an online-only run applies it too
    (it was skipped without a dataset); the transforms fitted to data say they do nothing."""
    out = tmp_path / "run"
    run(
        "--algo cql --task hopper --online-steps 12 --eval-interval 12 --agent.start-steps 4 "
        f"--agent.reward-scale 10 --out {out}"
    )
    scale = json.loads((out / "transforms.json").read_text())["reward_transform"]["scale"]
    assert scale == 10.0
    seen = replay_transitions(out)["rewards"]
    main(["dataset", "from-run", str(out), str(tmp_path / "online.npz")])
    exported, _ = load_native(tmp_path / "online.npz")
    np.testing.assert_allclose(seen, 10 * exported.rewards, rtol=1e-5)
    assert np.abs(exported.rewards).max() < 10  # Hopper's own reward scale
    out = tmp_path / "iql"
    run(f"--algo iql --task hopper --online-steps 4 --eval-interval 4 --out {out}")
    assert "--agent.reward-scale-by-return-range has no effect" in capsys.readouterr().err


def test_observation_normalisation_and_held_out_q_bias(tmp_path):
    # 30 terminating episodes of 20 steps, states far from zero mean and unit scale.
    episodes, length, gamma = 30, 20, 0.99
    rng = np.random.default_rng(0)
    states = rng.normal(5.0, 3.0, (episodes, length + 1, 11)).astype(np.float32)
    data = {
        "observations": states[:, :-1].reshape(-1, 11),
        "actions": rng.uniform(-1, 1, (episodes * length, 3)).astype(np.float32),
        "rewards": np.ones(episodes * length, np.float32),
        "next_observations": states[:, 1:].reshape(-1, 11),
        "terminals": np.tile(np.arange(length) == length - 1, episodes),
    }
    path = save_native(Dataset.from_arrays(data), tmp_path / "hopper.npz")
    out = tmp_path / "run"
    run(
        f"--algo td3bc --task hopper --dataset {path} --offline-steps 10 --online-steps 10 "
        f"--eval-interval 10 --holdout-episodes 3 --out {out}"
    )
    saved = json.loads((out / "transforms.json").read_text())["observation_normalizer"]
    trained_on = np.delete(states[:, :-1], [0, 14, 29], axis=0).reshape(-1, 11)  # 3 held out
    np.testing.assert_allclose(saved["mean"], trained_on.mean(0), rtol=1e-5)
    np.testing.assert_allclose(saved["std"], trained_on.std(0) + 1e-3, rtol=1e-5)

    # Held-out Q-bias: Q of the logged actions against their discounted return-to-go.
    to_go = (1 - gamma ** np.arange(length, 0, -1)) / (1 - gamma)
    for record in read_metrics(out):
        np.testing.assert_allclose(record["holdout_q_mc_mean"], to_go.mean(), rtol=1e-5)
        assert np.isfinite(record["holdout_q_bias"])

    # Online, the agent saw normalised states; the exported buffer is in the env's units.
    seen = replay_transitions(out)["observations"]
    main(["dataset", "from-run", str(out), str(tmp_path / "online.npz")])
    exported, _ = load_native(tmp_path / "online.npz")
    mean, std = np.asarray(saved["mean"]), np.asarray(saved["std"])
    np.testing.assert_allclose(seen, (exported.observations - mean) / std, atol=1e-4)
    assert np.abs(exported.observations.mean(0) - mean).max() > 1.0  # raw Hopper states


def test_calql_online_episodes_are_stored_with_their_monte_carlo_returns(tmp_path):
    out, path = tmp_path / "run", hopper_dataset(tmp_path)
    run(
        f"--algo calql --task hopper --dataset {path} --offline-steps 10 --online-steps 80 "
        f"--eval-interval 40 --agent.cql-n-actions 2 --out {out}"
    )
    replay = replay_transitions(out)
    ends = replay["masks"] == 0  # random actions: Hopper falls within 80 steps
    assert ends.any() and ends[-1], "only finished episodes are stored"
    expected = discounted_returns(replay["rewards"], ends, 0.99)
    np.testing.assert_allclose(replay["mc_returns"], expected, rtol=1e-5)
    assert summary(out)["updates"] < 80  # updates waited for the first stored episode


def test_switch_hooks_freeze_and_reset_optimizers(tmp_path):
    out, path = tmp_path / "run", hopper_dataset(tmp_path)
    run(
        f"--algo sac --task hopper --dataset {path} --offline-steps 20 --online-steps 20 "
        f"--eval-interval 20 --agent.start-steps 0 --freeze actor --reset-optimizers "
        f"--data-mix proportional --save-policies --out {out}"
    )
    assert load_config(out).freeze == ("actor",) and summary(out)["updates"] == 20
    first, last = (np.load(p) for p in sorted((out / "policies").glob("*.npz")))
    assert all(np.array_equal(first[k], last[k]) for k in first.files if k != "meta")

    agent = SAC.create(SACConfig(hidden_dims=(8,), batch_size=4), *SPACES, 0)
    assert set(trained_parts(agent)) == {"actor", "critic", "log_temperature"}
    agent = update(agent, random_batch(0, 4, 1))[0]  # Adam moments are now non-zero
    switched = switch_parts(agent, freeze=("actor",), reset_optimizers=True)
    mu = switched.critic.opt_state[0].mu
    assert all(not np.asarray(x).any() for x in jax.tree.leaves(mu))  # fresh Adam state
    stepped = update(switched, random_batch(1, 4, 1))[0]
    assert tree_equal(stepped.actor.params, agent.actor.params)
    assert not tree_equal(stepped.critic.params, agent.critic.params)
    with pytest.raises(ValueError, match="no trained part of that name; its parts: actor"):
        switch_parts(agent, freeze=("policy",))


def tree_equal(a, b) -> bool:
    leaves = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return all(np.array_equal(x, y) for x, y in leaves)


def test_q_bias_is_reported_in_the_environment_reward_scale():
    # Two terminating held-out episodes of 5 steps with reward 1, learned at 4x the scale.
    rng = np.random.default_rng(0)
    states = rng.normal(size=(2, 6, 11)).astype(np.float32)
    holdout = Dataset.from_arrays(
        {
            "observations": states[:, :-1].reshape(-1, 11),
            "actions": rng.uniform(-1, 1, (10, 3)).astype(np.float32),
            "rewards": np.ones(10, np.float32),
            "next_observations": states[:, 1:].reshape(-1, 11),
            "terminals": np.tile(np.arange(5) == 4, 2),
        }
    )
    task = dataclasses.replace(get_task("hopper"), reward_transform=RewardTransform(4.0))
    env = task.make_env()
    agent = SAC.create(SACConfig(hidden_dims=(8,)), env.observation_space, env.action_space, 0)
    metrics = Evaluator(task, 1, seed=0, gamma=0.5, holdout=holdout)(agent)
    to_go = (1 - 0.5 ** np.arange(5, 0, -1)) / (1 - 0.5)  # env units: 1 per step
    assert metrics["holdout_q_mc_mean"] == pytest.approx(to_go.mean(), rel=1e-5)
    q = np.asarray(agent.q_values(holdout.observations, holdout.actions))
    assert metrics["holdout_q_pred_mean"] == pytest.approx(q.mean() / 4, rel=1e-4)


class NoiseOnly(flax.struct.PyTreeNode):
    """An agent whose action is the noise of the key it is given, whatever the state: it shows
    which noise each decision of an evaluation gets. No critic (Q is 0)."""

    def sample_actions(self, observations, key, deterministic=False):
        return jax.random.uniform(key, (*observations.shape[:-1], 3), minval=-1, maxval=1)

    def q_values(self, observations, actions):
        return jnp.zeros(observations.shape[:-1])


def test_evaluation_draws_fresh_noise_at_each_decision_and_repeats_it():
    """Flow policies act from noise even when deterministic: the references draw it anew at
    each step; one fixed key would replay the same noise at every step of every episode.
    The sequence restarts with each evaluation, so evaluations remain comparable."""
    evaluator = Evaluator(get_task("hopper"), 2, seed=0, gamma=0.99)
    first = evaluator.rollouts(evaluator.policy(NoiseOnly()))[1]
    actions = np.asarray(first[0]["act"])
    assert len(actions) > 2 and len(np.unique(actions[:, 0])) == len(actions)
    assert not np.array_equal(first[0]["act"][0], first[1]["act"][0])  # each environment its own
    again = evaluator.rollouts(evaluator.policy(NoiseOnly()))[1]
    np.testing.assert_array_equal(actions, np.asarray(again[0]["act"]))


def test_a_flow_run_from_before_gelu_is_not_resumed_as_gelu(tmp_path):
    """FQL's and QC's networks became GELU; a saved config without `activation` ran ReLU, so
    reusing it under today's default would load ReLU weights into GELU networks."""
    from o2o.train.pipeline import check_resumable, default_config

    config = default_config("fql", task="hopper", out=tmp_path)
    saved = json.loads(json.dumps(dataclasses.asdict(config), default=str))
    del saved["agent"]["activation"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=r"agent\.activation \(saved 'relu', now 'gelu'\)"):
        check_resumable(tmp_path, config)
    relu = dataclasses.replace(config, agent=dataclasses.replace(config.agent, activation="relu"))
    check_resumable(tmp_path, relu)


def test_an_offline_run_extended_online_may_evaluate_at_another_interval(tmp_path):
    """Offline updates and online environment steps are counted on different scales, so an
    offline run extended online may evaluate at another interval; otherwise a changed
    interval (a table's 'last three evaluations' would mean another span) or any training
    setting is refused."""
    from o2o.train.pipeline import _config_json, check_resumable, default_config

    config = default_config("td3bc", task="hopper-medium", offline_steps=100, online_steps=0)
    (tmp_path / "config.json").write_text(json.dumps(_config_json(config)))
    check_resumable(tmp_path, dataclasses.replace(config, online_steps=500, eval_interval=50))
    with pytest.raises(ValueError, match="eval_interval"):
        check_resumable(tmp_path, dataclasses.replace(config, eval_interval=50))
    wider = dataclasses.replace(config.agent, batch_size=512)
    with pytest.raises(ValueError, match="batch_size"):
        check_resumable(tmp_path, dataclasses.replace(config, agent=wider, eval_interval=50))


def agent_arrays(run_dir, phase: str) -> list[np.ndarray]:
    """The arrays of a run's agent as its `phase` checkpoint holds it (RNG keys as data)."""
    agent, _, _ = trained_agent(run_dir, phase)
    keys = jax.dtypes.prng_key
    return [
        np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, keys) else x)
        for x in jax.tree.leaves(agent)
    ]


def test_seeds_in_one_process_match_runs_of_one_seed(tmp_path, capsys, monkeypatch):
    """`--seeds 0 1`: one run directory per seed, whose offline updates and online phase
    (vmapped together) match a run of that seed alone to float tolerance; rerunning the command
    finds every seed done."""
    data = hopper_dataset(tmp_path)
    flags = (
        f"--algo td3bc --task hopper --dataset {data} --offline-steps 30 --online-steps 10 "
        "--eval-interval 15 --agent.start-steps 5"
    )
    run(f"{flags} --seeds 0 1 --out {tmp_path / 'both'}")
    run(f"{flags} --seed 1 --out {tmp_path / 'alone'}")
    runs = {seed: tmp_path / "both" / f"seed{seed}" for seed in (0, 1)}
    assert [summary(d)["seed"] for d in runs.values()] == [0, 1]
    for out in (*runs.values(), tmp_path / "alone"):
        assert [(r["phase"], r["step"]) for r in read_metrics(out)] == [
            ("offline", 0),
            ("offline", 15),
            ("offline", 30),
            ("online", 30),
            ("online", 40),
        ]
    assert [r.get("vmapped_seeds") for r in read_metrics(runs[0])][1:] == [2] * 4
    for phase in ("offline", "online"):
        vmapped, alone, other = (
            agent_arrays(d, phase) for d in (runs[1], tmp_path / "alone", runs[0])
        )
        for x, y in zip(vmapped, alone, strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
        assert not all(np.allclose(x, y) for x, y in zip(vmapped, other, strict=True))
    stored = [replay_transitions(d) for d in (runs[1], tmp_path / "alone")]
    for name, rows in stored[0].items():
        np.testing.assert_allclose(rows, stored[1][name], rtol=1e-4, atol=1e-5)
    before = (runs[0] / "metrics.jsonl").read_text()
    run(f"{flags} --seeds 0 1 --out {tmp_path / 'both'}")  # done: nothing changes
    assert (runs[0] / "metrics.jsonl").read_text() == before
    # Ctrl-C while the seeds step together online: every seed saved where it was, resumed.
    from o2o.train import online

    step, stopped = online.SeedsOnlineLoop._step, tmp_path / "stopped"

    def ctrl_c_at_step_4(self):
        step(self)
        if self.loops[0].progress.env_steps == 4:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(online.SeedsOnlineLoop, "_step", ctrl_c_at_step_4)
    with pytest.raises(SystemExit) as stop:
        run(f"{flags} --seeds 0 1 --out {stopped}")
    assert stop.value.code == 130 and "online step 4" in capsys.readouterr().err
    assert [online.saved_env_steps(stopped / f"seed{s}") for s in (0, 1)] == [4, 4]
    monkeypatch.setattr(online.SeedsOnlineLoop, "_step", step)
    run(f"{flags} --seeds 0 1 --out {stopped}")
    for seed in (0, 1):
        assert [r["step"] for r in read_metrics(stopped / f"seed{seed}")] == [0, 15, 30, 30, 40]
        assert summary(stopped / f"seed{seed}")["env_steps"] == 10
    with pytest.raises(SystemExit):
        run(f"{flags} --seeds 0 1 --seed 2")
    assert "not both" in capsys.readouterr().err


FINE_TUNE = (
    "--algo td3bc --task hopper --offline-steps 20 --online-steps 10 --eval-interval 10 "
    "--agent.start-steps 5"
)


def test_a_second_process_on_a_run_directory_stops_at_once(tmp_path):
    """Issue 22, case 1: two runs in one --out doubled every metrics row."""
    from o2o.checkpoint import locked

    out = tmp_path / "run"
    with locked([out]), pytest.raises(SystemExit) as stop:
        run(f"{FINE_TUNE} --dataset {hopper_dataset(tmp_path)} --out {out}")
    assert stop.value.code == 2 and not (out / "metrics.jsonl").exists()


def test_lost_checkpoints_lose_no_records(tmp_path):
    """Issue 22, case 3: with checkpoints/offline gone, re-running a finished fine-tuning run
    retrained offline and erased every online row and the dip from summary.json. Case 2: with
    only checkpoints/latest.old left (a crash between the two renames of a save), the run
    started over from step 0 and rewrote metrics.jsonl."""
    out, data = tmp_path / "run", hopper_dataset(tmp_path)
    run(f"{FINE_TUNE} --dataset {data} --out {out}")
    records, finished = read_metrics(out), summary(out)
    shutil.rmtree(out / "checkpoints" / "offline")
    run(f"{FINE_TUNE} --dataset {data} --out {out}")
    assert read_metrics(out) == records
    assert summary(out)["dip"] == finished["dip"]
    assert summary(out)["offline_final_score"] == finished["offline_final_score"]

    latest = out / "checkpoints" / "latest"
    latest.rename(latest.with_name("latest.old"))  # the first rename done, the second not
    longer = FINE_TUNE.replace("--online-steps 10", "--online-steps 20")
    run(f"{longer} --dataset {data} --out {out}")
    after = read_metrics(out)
    assert after[: len(records)] == records  # nothing rewritten
    assert [r["step"] for r in after] == [0, 10, 20, 20, 30, 40]
    assert summary(out)["env_steps"] == 20 and latest.exists()
    assert not latest.with_name("latest.old").exists()


# Runs `o2o train ARGS` in a fresh process that kills itself (SIGKILL) at the AT-th call of
# WHERE: an offline chunk of updates (of 5), an online step, or a file sync inside a
# checkpoint save.
KILLER = """
import os, signal, sys
from o2o import checkpoint
from o2o.cli import main
from o2o.train import offline, online

where, at, calls = sys.argv[1], int(sys.argv[2]), []
offline.CHUNK = 5
owner, name = {
    "offline": (offline, "_update_chunk"),
    "online": (online.OnlineLoop, "_step"),
    "save": (checkpoint, "_fsync"),
}[where]
original = getattr(owner, name)

def killing(*args, **kwargs):
    calls.append(1)
    if len(calls) == at:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(*args, **kwargs)

setattr(owner, name, killing)
main(sys.argv[3:])
"""


def test_killed_in_each_phase_and_in_a_save_the_run_ends_as_if_never_killed(tmp_path):
    """kill -9 at a random point of the offline phase, of the online phase and of a checkpoint
    save, each time resuming: the records are those of an uninterrupted run (the steps of
    `test_lost_checkpoints_lose_no_records`), and the summary is written."""
    out, data = tmp_path / "run", hopper_dataset(tmp_path)
    flags = f"{FINE_TUNE} --dataset {data} --out {out} {TINY}".split()
    rng = np.random.default_rng()
    # offline: 4 chunks of 5 updates; online: 10 steps; the last attempt saves once (4 syncs)
    points = {
        where: int(rng.integers(1, last + 1))
        for where, last in (("offline", 4), ("online", 10), ("save", 4))
    }
    for where, at in points.items():
        command = [sys.executable, "-c", KILLER, where, str(at), "train", *flags]
        killed = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert killed.returncode == -signal.SIGKILL, (points, killed.stderr[-2000:])
    run(f"{FINE_TUNE} --dataset {data} --out {out}")
    assert [r["step"] for r in read_metrics(out)] == [0, 10, 20, 20, 30], points
    assert summary(out)["env_steps"] == 10 and summary(out)["offline_updates"] == 20, points


def test_a_half_written_checkpoint_is_not_taken(tmp_path):
    """A checkpoint whose files do not match their manifest is skipped for the previous one."""
    from o2o.checkpoint import find_checkpoint, save_checkpoint

    directory = tmp_path / "ckpt"
    save_checkpoint(directory, {"w": np.ones(3)}, {"updates": 1})
    assert find_checkpoint(directory) == directory
    save_checkpoint(directory.with_name("ckpt.tmp"), {"w": np.ones(3)}, {"updates": 2})
    assert find_checkpoint(directory) == directory.with_name("ckpt.tmp")  # written, not switched
    (directory.with_name("ckpt.tmp") / "state.npz").write_bytes(b"torn")
    assert find_checkpoint(directory) == directory


def test_a_diverging_run_stops_with_its_last_good_checkpoint(tmp_path, capsys):
    """Issue 22, case 4: with an exploding learning rate, training ran on NaN and exited 0."""
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as stop:
        run(
            f"--algo td3bc --task hopper --dataset {hopper_dataset(tmp_path)} --out {out} "
            "--offline-steps 40 --online-steps 0 --eval-interval 20 --agent.critic-lr 1e30 "
            "--agent.actor-lr 1e30"
        )
    assert stop.value.code == 2 and "diverged" in capsys.readouterr().err
    assert [r["step"] for r in read_metrics(out)] == [0]  # nothing of the diverged agent
    assert not (out / "summary.json").exists()
    progress = json.loads((out / "checkpoints" / "offline" / "progress.json").read_text())
    assert progress["updates"] == 0


def _outside(low: float, high: float, low_open: bool = False) -> st.SearchStrategy:
    """Floats (NaN and infinities included) outside [low, high] ((low, high] if low_open)."""
    return st.floats().filter(lambda x: not (low < x <= high if low_open else low <= x <= high))


INVALID_FLAGS = {
    "--eval-interval": st.integers(max_value=0),
    "--eval-episodes": st.integers(max_value=0),
    "--offline-steps": st.integers(max_value=-1),
    "--online-steps": st.integers(max_value=-1),
    "--holdout-episodes": st.integers(max_value=-1),
    "--seed": st.integers(max_value=-1),
    "--agent.batch-size": st.integers(max_value=0),
    "--agent.utd-ratio": st.integers(max_value=0),
    "--agent.num-critics": st.integers(max_value=0),
    "--agent.discount": _outside(0.0, 1.0, low_open=True),
    "--agent.tau": _outside(0.0, 1.0, low_open=True),
    "--agent.offline-ratio": _outside(0.0, 1.0),
    "--agent.critic-lr": st.floats().filter(lambda x: not x > 0),
    "--agent.hidden-dims": st.lists(st.integers(-3, 0), min_size=1, max_size=3),
}


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(flag=st.sampled_from(sorted(INVALID_FLAGS)), data=st.data())
def test_no_invalid_flag_value_is_accepted(flag, data, tmp_path, capsys):
    value = data.draw(INVALID_FLAGS[flag])
    values = [str(v) for v in value] if isinstance(value, list) else [str(value)]
    with pytest.raises(SystemExit) as stop:
        main(["train", "--algo", "sac", flag, *values, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs (skipped where this process may not mount one)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


def test_a_full_disk_stops_the_run_in_one_line_and_loses_nothing(small_disk, capsys):
    out, filler = small_disk / "run", small_disk / "filler"
    flags = f"--algo sac --online-steps 20 --eval-interval 10 --agent.start-steps 5 --out {out}"
    filler.write_bytes(b"\0" * (2**21 - 64 * 2**10))  # 64 kB left: less than a checkpoint
    with pytest.raises(SystemExit) as stop:
        run(flags)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err
    assert "No space left on device; the disk is full: free space" in err
    filler.unlink()
    run(flags)
    assert [r["env_steps"] for r in read_metrics(out)] == [0, 10, 20]
    assert summary(out)["env_steps"] == 20


def test_report_counts_a_diverged_run_and_names_a_broken_file(tmp_path, capsys):
    """Issue 22, case 4: NaN scores (logged as null by runs from before the divergence guard)
    crashed `o2o report`; a torn last line (a kill mid-write) and bad JSON are named."""
    run_dir = tmp_path / "old"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"algo": "cql", "task": "hopper"}))
    scores = [("offline", 0, 0, 5.0), ("offline", 10, 0, None)]
    scores += [("online", 10, 0, None), ("online", 20, 10, None)]
    lines = [
        json.dumps({"phase": p, "step": s, "env_steps": e, "normalized_score": v, "q_bias": v})
        for p, s, e, v in scores
    ]
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 3')
    main(["report", str(run_dir), "--out", str(tmp_path / "report")])
    assert "| cql | 1 | 1 of 1 |" in (tmp_path / "report" / "report.md").read_text()
    assert "last line was cut short" in capsys.readouterr().err
    (run_dir / "config.json").write_text("{oops")
    with pytest.raises(SystemExit) as stop:
        main(["report", str(run_dir)])
    assert stop.value.code == 2 and "config.json: not valid JSON" in capsys.readouterr().err


def test_demo_fine_tunes_pretrained_offline_runs(tmp_path, capsys, monkeypatch):
    """`--pretrained DIR`: the offline runs DIR/ALGO are copied and fine-tuned (their offline
    phase is not rerun, their settings kept), RLPD runs on the same data."""
    monkeypatch.setenv("O2O_DATA_DIR", str(tmp_path / "data"))
    shipped = tmp_path / "shipped"
    common = (
        "--task hopper-medium --dataset-size 3000 --offline-steps 20 --online-steps 0 "
        "--eval-interval 10 --eval-episodes 2 --agent.hidden-dims 8 8"
    )
    for algo in ("td3bc", "cql"):
        main(["train", "--algo", algo, *common.split(), "--out", str(shipped / algo)])
    with pytest.raises(SystemExit):  # not an offline cql run: said, nothing trained
        main(["demo", "--pretrained", str(shipped / "cql"), "--out", str(tmp_path / "bad")])
    assert "not a run directory" in capsys.readouterr().err
    out = tmp_path / "demo"
    flags = f"--pretrained {shipped} --online-steps 30 --rlpd-start-steps 25 --out {out}"
    main(["demo", *flags.split()])
    said = capsys.readouterr()
    assert str(out / "report" / "report.html") in said.out
    assert "td3bc: " in said.out + said.err and "at the switch" in said.out + said.err
    for algo in ("td3bc", "cql"):
        done = summary(out / algo)
        assert done["offline_updates"] == 20 and done["env_steps"] == 30 and "dip" in done
        offline = [r for r in read_metrics(out / algo) if r["phase"] == "offline"]
        assert [r["step"] for r in offline] == [0, 10, 20]  # the shipped curve, not retrained
        assert not (shipped / algo / "checkpoints" / "online").exists()  # the copy learns
    rlpd = json.loads((out / "rlpd" / "config.json").read_text())
    assert (rlpd["agent"]["hidden_dims"], rlpd["dataset_size"]) == ([8, 8], 3000)
    assert summary(out / "rlpd")["updates"] == (30 - 25) * 20
    (shipped / "bc").mkdir()  # not a run: named, nothing trained
    with pytest.raises(SystemExit):
        main(["demo", "--pretrained", str(shipped), "--out", str(tmp_path / "bad2")])
    assert f"{shipped / 'bc'}" in capsys.readouterr().err


def test_the_shipped_demo_runs_are_offline_runs_to_fine_tune():
    """`make demo` fine-tunes assets/demo/hopper-medium: each an offline run at the end of its
    offline phase, of the agent its folder names, on the demo's data."""
    runs = cli._pretrained_runs(cli.DEMO_PRETRAINED)
    assert sorted(runs) == ["calql", "cql", "td3bc"]
    for run in runs.values():
        config = load_config(run)
        assert (config.task, config.dataset_size, config.online_steps) == (
            "hopper-medium",
            cli.DEMO_DATASET_SIZE,
            0,
        )
        assert summary(run)["offline_updates"] == config.offline_steps
