"""Dataset formats: round trips through every format, the field's layouts read as their
authors define them (D4RL without next_observations, Minari's T+1 observations and Dict
spaces, OGBench's trajectory-end `terminals`), and broken files named in the error."""

import json

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from o2o.cli import main as cli_main
from o2o.data.dataset import FIELDS, Dataset, DatasetError
from o2o.data.formats import SAVERS, detect_format, load_dataset, save_dataset


def episodes_dataset() -> Dataset:
    """Three episodes: one ends in a terminal, one at a time limit, one at the end of data."""
    rng = np.random.default_rng(0)
    lengths, ends = (4, 3, 2), ("terminal", "timeout", "cut")
    columns = {name: [] for name in FIELDS}
    for length, end in zip(lengths, ends, strict=True):
        states = rng.normal(size=(length + 1, 3)).astype(np.float32)
        columns["observations"].append(states[:-1])
        columns["next_observations"].append(states[1:])
        columns["actions"].append(rng.uniform(-1, 1, (length, 2)).astype(np.float32))
        columns["rewards"].append(rng.normal(size=length).astype(np.float32))
        flags = np.zeros(length, bool)
        columns["terminals"].append(
            flags | ((end == "terminal") & (np.arange(length) == length - 1))
        )
        columns["timeouts"].append(flags | ((end == "timeout") & (np.arange(length) == length - 1)))
    return Dataset.from_arrays({k: np.concatenate(v) for k, v in columns.items()})


def assert_same(a: Dataset, b: Dataset) -> None:
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


@pytest.mark.parametrize("format", SAVERS)
def test_round_trip_every_format(tmp_path, format):
    data = episodes_dataset()
    target = tmp_path / (
        "out" if format == "minari" else "out.hdf5" if format == "d4rl" else "out.npz"
    )
    path = save_dataset(data, target, format=format, meta={"task": "hopper"})
    assert detect_format(path) == format
    loaded, meta = load_dataset(path)
    # Minari cannot say "cut without a time limit": the final, cut episode comes back truncated.
    expected = data
    if format in ("minari", "ogbench"):
        timeouts = data.timeouts.copy()
        timeouts[-1] = True
        expected = Dataset.from_arrays(data.arrays() | {"timeouts": timeouts})
    assert_same(loaded, expected)
    assert meta.get("task") == "hopper"


def test_d4rl_without_next_observations_drops_timeout_rows(tmp_path):
    # Old D4RL files: next obs is obs[t+1]; rows at a timeout have no valid successor.
    obs = np.arange(6, dtype=np.float32)[:, None]
    path = tmp_path / "old.hdf5"
    with h5py.File(path, "w") as f:
        f["observations"] = obs
        f["actions"] = np.zeros((6, 1), np.float32)
        f["rewards"] = np.arange(6, dtype=np.float32)
        f["terminals"] = np.array([0, 0, 0, 0, 0, 0], bool)
        f["timeouts"] = np.array([0, 0, 1, 0, 0, 0], bool)
    data, _ = load_dataset(path)
    np.testing.assert_array_equal(data.rewards, [0, 1, 3, 4])  # row 2 (timeout), row 5 (last)
    np.testing.assert_array_equal(data.next_observations[:, 0], [1, 2, 4, 5])
    assert [(s.start, s.stop) for s in data.episodes()] == [(0, 2), (2, 4)]  # continuity rule


def test_minari_dict_observations_and_terminations(tmp_path):
    file = tmp_path / "maze" / "data" / "main_data.hdf5"
    file.parent.mkdir(parents=True)
    with h5py.File(file, "w") as f:
        for i, (length, terminated) in enumerate(((3, True), (2, False))):
            episode = f.create_group(f"episode_{i}")
            obs = episode.create_group("observations")
            obs["observation"] = np.full((length + 1, 4), i, np.float32)
            obs["desired_goal"] = np.full((length + 1, 2), 10 + i, np.float32)
            obs["achieved_goal"] = np.arange(length + 1, dtype=np.float32)[:, None].repeat(2, 1)
            episode["actions"] = np.zeros((length, 2), np.float32)
            episode["rewards"] = np.ones(length, np.float32)
            episode["terminations"] = (
                np.arange(length) == length - 1 if terminated else np.zeros(length, bool)
            )
            episode["truncations"] = (
                np.zeros(length, bool) if terminated else np.arange(length) == length - 1
            )
    data, meta = load_dataset(tmp_path / "maze")
    assert meta["observation_keys"] == ["achieved_goal", "desired_goal", "observation"]
    assert data.observations.shape == (5, 8)
    np.testing.assert_array_equal(data.observations[1], [1, 1, 10, 10, 0, 0, 0, 0])
    np.testing.assert_array_equal(data.next_observations[2, :2], [3, 3])  # the T+1-th row
    np.testing.assert_array_equal(data.terminals, [0, 0, 1, 0, 0])
    np.testing.assert_array_equal(data.timeouts, [0, 0, 0, 0, 1])


def test_ogbench_terminals_are_trajectory_ends_not_true_terminals(tmp_path):
    path = tmp_path / "ogbench.npz"
    obs = np.arange(6, dtype=np.float32)[:, None]
    np.savez(
        path,
        observations=obs,
        actions=np.zeros((6, 1), np.float32),
        rewards=np.array([0, 0, 1, 0, 0, 0], np.float32),
        terminals=np.array([0, 0, 1, 0, 0, 1], np.float32),  # two trajectories of 3
        masks=np.array([1, 1, 0, 1, 1, 1], np.float32),  # the first reached its goal
    )
    data, _ = load_dataset(path)
    # Compact layout: each trajectory's last row has no successor and is dropped.
    np.testing.assert_array_equal(data.observations[:, 0], [0, 1, 3, 4])
    np.testing.assert_array_equal(data.next_observations[:, 0], [1, 2, 4, 5])
    np.testing.assert_array_equal(data.terminals, [0, 0, 0, 0])
    np.testing.assert_array_equal(data.timeouts, [0, 1, 0, 1])
    assert [(s.start, s.stop) for s in data.episodes()] == [(0, 2), (2, 4)]


def test_ogbench_with_next_observations_keeps_true_terminals(tmp_path):
    path = tmp_path / "ogbench.npz"
    obs = np.arange(4, dtype=np.float32)[:, None]
    np.savez(
        path,
        observations=obs,
        next_observations=obs + 1,
        actions=np.zeros((4, 1), np.float32),
        rewards=np.array([0, 1, 0, 0], np.float32),
        terminals=np.array([0, 1, 0, 1], np.float32),
        masks=np.array([1, 0, 1, 1], np.float32),
    )
    data, _ = load_dataset(path)
    np.testing.assert_array_equal(data.terminals, [0, 1, 0, 0])
    np.testing.assert_array_equal(data.timeouts, [0, 0, 0, 1])


def test_ogbench_goal_conditioned_data_without_rewards_is_refused(tmp_path):
    path = tmp_path / "navigate.npz"
    np.savez(
        path,
        observations=np.zeros((3, 2)),
        actions=np.zeros((3, 1)),
        terminals=np.array([0, 0, 1]),
    )
    with pytest.raises(DatasetError, match=r"navigate\.npz.*'rewards'.*singletask"):
        load_dataset(path)


def test_broken_files_name_the_file_and_the_fix(tmp_path):
    garbage = tmp_path / "broken.hdf5"
    garbage.write_bytes(b"not hdf5 at all")
    with pytest.raises(DatasetError, match=r"broken\.hdf5.*not a readable HDF5 file.*Fix"):
        load_dataset(garbage)
    partial = tmp_path / "partial.hdf5"
    with h5py.File(partial, "w") as f:
        f["observations"] = np.zeros((3, 2))
        f["actions"] = np.zeros((3, 1))
    with pytest.raises(DatasetError, match=r"partial\.hdf5.*'rewards'.*missing"):
        load_dataset(partial)
    csv = tmp_path / "data.csv"
    csv.write_text("x")
    with pytest.raises(ValueError, match=r"suffix '\.csv'.*--from"):
        load_dataset(csv)
    with pytest.raises(FileNotFoundError, match="no such dataset"):
        load_dataset(tmp_path / "missing.npz")


def test_cli_convert_keeps_the_data(tmp_path, capsys):
    data = episodes_dataset()
    src = save_dataset(data, tmp_path / "src.npz", meta={"name": "toy"})
    cli_main(["dataset", "convert", str(src), str(tmp_path / "d4rl.hdf5")])
    cli_main(["dataset", "convert", str(tmp_path / "d4rl.hdf5"), str(tmp_path / "back.npz")])
    back, meta = load_dataset(tmp_path / "back.npz")
    assert_same(back, data)
    assert meta == {"name": "toy"}
    cli_main(["dataset", "info", str(tmp_path / "back.npz"), "--json", str(tmp_path / "info.json")])
    (row,) = json.loads((tmp_path / "info.json").read_text())
    assert row["transitions"] == len(data)


def test_a_native_file_without_next_observations_stays_native(tmp_path):
    """Issue 22, case 5: such a file was taken for OGBench's, its terminals for trajectory
    ends (a wrong score, and `train` used it)."""
    data = episodes_dataset()
    arrays = data.arrays()
    del arrays["next_observations"]
    path = tmp_path / "native.npz"
    np.savez(path, **arrays)
    assert detect_format(path) == "native"
    loaded, _ = load_dataset(path)
    # As D4RL's qlearning_dataset: the following row is the next state; rows cut by a time
    # limit (and the last row) have none and are dropped; the true terminal stays one.
    assert len(loaded) == len(data) - 2
    assert loaded.terminals.sum() == 1
    np.testing.assert_array_equal(loaded.next_observations[:2], data.observations[1:3])
    np.savez(tmp_path / "unclear.npz", **{k: v for k, v in arrays.items() if k != "timeouts"})
    with pytest.raises(DatasetError, match=r"unclear\.npz.*'terminals'.*--from native"):
        load_dataset(tmp_path / "unclear.npz")
    assert len(load_dataset(tmp_path / "unclear.npz", format="native")[0]) == len(data) - 1


def test_unreadable_parts_name_the_file_and_field(tmp_path):
    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"empty\.npz.*not a readable \.npz"):
        load_dataset(tmp_path / "empty.npz")
    with h5py.File(tmp_path / "group.hdf5", "w") as f:
        for name in ("observations", "actions", "terminals"):
            f[name] = np.zeros((3, 2))
        f.create_group("rewards")
    with pytest.raises(DatasetError, match=r"group\.hdf5.*'rewards'.*a group"):
        load_dataset(tmp_path / "group.hdf5")
    corrupt = save_dataset(episodes_dataset(), tmp_path / "corrupt.hdf5")
    with h5py.File(corrupt, "r") as f:
        offset = f["observations"].id.get_chunk_info(0).byte_offset  # gzip: chunked
    raw = bytearray(corrupt.read_bytes())
    raw[offset : offset + 16] = b"\xff" * 16  # inside the gzip stream of observations
    corrupt.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match=r"corrupt\.hdf5.*'observations'.*cannot be read"):
        load_dataset(corrupt)
    np.savez(tmp_path / "meta.npz", **episodes_dataset().arrays(), meta=np.asarray("{oops"))
    with pytest.raises(DatasetError, match=r"meta\.npz.*'meta'.*not JSON"):
        load_dataset(tmp_path / "meta.npz")


def test_info_and_convert_check_the_task_as_train_does(tmp_path, capsys):
    """`dataset info` and `convert` refuse what `train` would (here: actions outside the
    task's bounds), with one line and exit status 2."""
    data = episodes_dataset()
    arrays = data.arrays() | {
        "observations": np.zeros((len(data), 4), np.float32),
        "next_observations": np.zeros((len(data), 4), np.float32),
        "actions": np.full((len(data), 2), 3.0, np.float32),  # pointmaze's bounds: [-1, 1]
    }
    path = save_dataset(Dataset.from_arrays(arrays), tmp_path / "wide.npz")
    for argv in (
        ["dataset", "info", str(path), "--task", "pointmaze-umaze"],
        ["dataset", "convert", str(path), str(tmp_path / "out.hdf5"), "--task", "pointmaze-umaze"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            cli_main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert "wide.npz: field 'actions'" in err and "outside the action space" in err
    assert not (tmp_path / "out.hdf5").exists()


FUZZ_FIELDS = (*FIELDS, "masks", "meta")


FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FUZZ
@given(data=st.data())
def test_any_npz_is_read_whole_or_refused_naming_the_file(tmp_path, data):
    """Fuzzed `.npz` files (fields missing, of other lengths, shapes and dtypes, NaN, broken
    metadata): each is read as a valid dataset or refused with a DatasetError that names the
    file; never another exception, never non-finite or misaligned data."""
    rows = data.draw(st.integers(0, 5))
    arrays = {}
    for name in data.draw(st.sets(st.sampled_from(FUZZ_FIELDS), min_size=1)):
        if name == "meta":
            arrays[name] = np.asarray(data.draw(st.sampled_from(["{}", "oops", "[1]"])))
            continue
        n = data.draw(st.sampled_from([rows, rows + 1]))
        shape = data.draw(st.sampled_from([(n,), (n, 2), (n, 2, 2), ()]))
        fill = data.draw(st.sampled_from([0.0, 1.0, 0.5, np.nan, np.inf]))
        dtype = data.draw(st.sampled_from(["float32", "int64", "bool", "str"]))
        value = np.full(shape, fill)
        arrays[name] = np.full(shape, "x") if dtype == "str" else value.astype(dtype)
    path = tmp_path / "fuzz.npz"
    np.savez(path, **arrays)
    try:
        dataset, _ = load_dataset(path)
    except DatasetError as err:
        assert "fuzz.npz" in str(err)
        return
    assert len(dataset) > 0
    for name in FIELDS:
        value = getattr(dataset, name)
        assert len(value) == len(dataset) and np.isfinite(value.astype(np.float32)).all()


def robomimic_file(path, drop: str | None = None):
    """Three demos (2 train, 1 valid) in robomimic's layout; `drop` leaves a field out."""
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "Lift"})
        for i, (steps, done) in enumerate(((4, True), (3, False), (2, True))):
            demo = data.create_group(f"demo_{i}")
            states = {"robot0_eef_pos": (steps + 1, 3), "object": (steps + 1, 2)}
            for key, shape in states.items():
                value = rng.normal(size=shape).astype(np.float32)
                demo[f"obs/{key}"], demo[f"next_obs/{key}"] = value[:-1], value[1:]
            demo["actions"] = rng.uniform(-1, 1, (steps, 2)).astype(np.float32)
            demo["rewards"] = np.arange(steps, dtype=np.float32)
            demo["dones"] = (np.arange(steps) == steps - 1) & done
            if drop is not None:
                del demo[drop]
        f["mask/train"] = np.array([b"demo_0", b"demo_1"])
        f["mask/valid"] = np.array([b"demo_2"])
    return path


def test_robomimic_demonstrations_are_read_by_split_and_keys(tmp_path, capsys):
    path = robomimic_file(tmp_path / "lift.hdf5")
    assert detect_format(path) == "robomimic"
    data, meta = load_dataset(path)  # the train split, every key in sorted order
    assert len(data) == 4 + 3 and data.observation_dim == 5
    np.testing.assert_array_equal(data.terminals, [0, 0, 0, 1, 0, 0, 0])
    np.testing.assert_array_equal(data.timeouts, [0, 0, 0, 0, 0, 0, 1])  # demo_1 ends undone
    assert [(s.start, s.stop) for s in data.episodes()] == [(0, 4), (4, 7)]
    assert meta["observation_keys"] == ["object", "robot0_eef_pos"]
    assert meta["robomimic_split"] == "train" and meta["robomimic_env_args"]["env_name"] == "Lift"
    with h5py.File(path) as f:
        np.testing.assert_array_equal(
            data.observations[:4, 2:], f["data/demo_0/obs/robot0_eef_pos"]
        )
    valid, _ = load_dataset(path, options={"split": "valid", "obs_keys": ["robot0_eef_pos"]})
    assert len(valid) == 2 and valid.observation_dim == 3 and valid.terminals[-1]
    out = tmp_path / "lift.npz"
    cli_main(["dataset", "convert", str(path), str(out), "--split", "valid"])
    assert len(load_dataset(out)[0]) == 2
    with pytest.raises(SystemExit) as stop:  # robomimic flags on another format
        cli_main(["dataset", "info", str(out), "--obs-keys", "object"])
    assert stop.value.code == 2 and "robomimic files only" in capsys.readouterr().err


def test_a_malformed_robomimic_file_is_named(tmp_path):
    path = robomimic_file(tmp_path / "broken.hdf5", drop="actions")
    with pytest.raises(DatasetError, match=r"broken\.hdf5:data/demo_0: field 'actions': missing"):
        load_dataset(path)
    path = robomimic_file(tmp_path / "keys.hdf5")
    with pytest.raises(DatasetError, match=r"field 'gripper': missing \(keys: \['object'"):
        load_dataset(path, options={"obs_keys": ["gripper"]})


def test_the_minari_package_reads_what_o2o_writes(tmp_path):
    minari = pytest.importorskip("minari", reason="the minari package is not installed")
    data = episodes_dataset()
    path = save_dataset(data, tmp_path / "toy", format="minari", meta={"name": "o2o/toy"})
    read = minari.MinariDataset(path / "data")
    assert read.total_episodes == 3 and read.total_steps == len(data)
    assert read.spec.dataset_id == "o2o/toy-v0"
    for episode, steps in zip(read.iterate_episodes(), data.episodes(), strict=True):
        np.testing.assert_array_equal(episode.observations[:-1], data.observations[steps])
        np.testing.assert_array_equal(episode.observations[1:], data.next_observations[steps])
        np.testing.assert_array_equal(episode.actions, data.actions[steps])
        np.testing.assert_array_equal(episode.rewards, data.rewards[steps])
        np.testing.assert_array_equal(episode.terminations, data.terminals[steps])
