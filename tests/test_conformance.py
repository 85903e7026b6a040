"""The agent contract (`o2o.agents.base`), checked on every registered agent with tiny networks:
create, update, act, Q, the switch, determinism under a seed, the checkpoint round trip, and
a short fine-tune (offline -> switch -> online) through the CLI in which the data layer and
the loops honour what the agent declares it needs."""

import dataclasses
import importlib.util

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from agent_helpers import hopper_dataset

from o2o.agents import AGENTS
from o2o.agents.base import BATCH_FIELDS, Needs
from o2o.checkpoint import load_checkpoint, save_checkpoint
from o2o.cli import main
from o2o.data.buffer import ReplayBuffer
from o2o.logging import read_metrics
from o2o.train.offline import seed_axes, stack, unstack
from o2o.train.pipeline import load_config, replay_transitions

OBS = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
ACT = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
BATCH, UTD = 8, 2
# Beyond tiny networks: FPO's rollouts of 2 environments x 5 steps, one epoch.
SMALL = {"fpo": {"num_envs": 2, "rollout_length": 5, "epochs": 1}}
# Each algorithm, plus ReBRAC keeping its critic penalty online (it needs next actions there).
CASES = {algo: (algo, {}) for algo in sorted(AGENTS)}
CASES["rebrac-online-critic-bc"] = ("rebrac", {"online_critic_bc": 0.01})
# The vmapped update of several seeds (`o2o train --seeds`), checked on one agent of each kind
# of update (compiling it is slow): SAC's ensembles, CQL's proposals, IQL's expectile, TD3's
# delayed actor, FQL's flow distillation and QC's chunks.
VMAPPED = {"edac", "cql", "iql", "rebrac", "fql", "qc"}
# Through the CLI, one recipe per agent class and loop suffices: naive, sac-n and edac are
# SAC with other fields (rlpd and sac cover its two data mixes), bc-det is BC.
FINE_TUNED = sorted(set(CASES) - {"naive", "sac-n", "edac", "bc-det"})
# Whether the 'export' extra is installed (the fine-tuned runs are then exported too).
EXPORTABLE = all(importlib.util.find_spec(m) for m in ("jax2onnx", "onnxruntime"))


def tiny(algo: str, config=None, **changes):
    """`algo`'s default config (or `config`) with 8 x 8 networks and batches of 8."""
    config = config or AGENTS[algo].default_config
    fields = {f.name for f in dataclasses.fields(config)}
    small = {name: (8, 8) for name in fields if name.endswith("hidden_dims")}
    return dataclasses.replace(
        config, **{"batch_size": BATCH} | small | SMALL.get(algo, {}) | changes
    )


def batch_for(needs: Needs, seed: int = 0) -> dict[str, jax.Array]:
    """`UTD` minibatches drawn by the data layer from random transitions holding the fields
    `needs` asks for (windows of steps for a chunked agent)."""
    rng, n = np.random.default_rng(seed), 64
    rows = {
        "observations": rng.normal(size=(n, 3)),
        "actions": rng.uniform(-1, 1, (n, 2)),
        "rewards": rng.normal(size=n),
        "next_observations": rng.normal(size=(n, 3)),
        "masks": (np.arange(n) % 16 != 15).astype(float),
        "next_actions": rng.uniform(-1, 1, (n, 2)),
        "mc_returns": rng.normal(size=n),
        "ends": (np.arange(n) % 16 == 15).astype(float),
    }
    keep = {"observations", "actions", "rewards", "next_observations", "masks"}
    keep |= needs.batch_fields | ({"ends"} if needs.horizon > 1 else set())
    buffer = ReplayBuffer.from_arrays(
        {k: v.astype(np.float32) for k, v in rows.items() if k in keep}
    )
    sample = buffer.sample(jax.random.key(seed), UTD * BATCH, needs.horizon)
    return jax.tree.map(lambda x: x.reshape(UTD, BATCH, *x.shape[1:]), sample)


def leaves_equal(a, b) -> bool:
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return all(np.array_equal(_data(x), _data(y)) for x, y in pairs)


def assert_leaves_close(a, b) -> None:
    """Equal to float tolerance: batched (vmapped) products round apart from single ones."""
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    for x, y in pairs:
        np.testing.assert_allclose(_data(x), _data(y), rtol=1e-4, atol=1e-5)


def is_key(x) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _data(x):
    return jax.random.key_data(x) if is_key(x) else np.asarray(x)


@pytest.mark.parametrize("case", sorted(CASES))
def test_agent_contract(case, tmp_path):
    algo, changes = CASES[case]
    spec = AGENTS[algo]
    config = tiny(algo, **changes)
    agent = spec.agent_cls.create(config, OBS, ACT, 3)
    assert leaves_equal(agent, spec.agent_cls.create(config, OBS, ACT, 3))  # seeded
    assert not leaves_equal(agent, spec.agent_cls.create(config, OBS, ACT, 4))

    needs = {phase: agent.needs(phase) for phase in ("offline", "online")}
    for need in needs.values():
        assert isinstance(need, Needs) and need.batch_fields <= set(BATCH_FIELDS)
    transforms = [
        (n.normalize_observations, n.reward_scale_by_return_range) for n in needs.values()
    ]
    assert transforms[0] == transforms[1], "the agent learns in one set of units"

    update = jax.jit(lambda a, b: a.update(b))
    batch = batch_for(needs["offline"])
    new, metrics = update(agent, batch)
    again, _ = update(agent, batch)
    assert leaves_equal(new, again)  # pure: the same agent and batch, the same result
    assert not leaves_equal(new, agent)
    assert metrics and all(np.shape(v) == () and np.isfinite(v) for v in metrics.values())
    if case in VMAPPED:  # seeds in one vmapped update, each as if updated alone
        other = spec.agent_cls.create(config, OBS, ACT, 4)
        pair = stack([agent, other])
        axes = seed_axes(pair)
        both = jax.jit(jax.vmap(lambda a, b: a.update(b), (axes, None), (axes, 0)))
        pair, _ = both(pair, batch)
        assert_leaves_close(unstack(pair, 0), new)
        assert_leaves_close(unstack(pair, 1), update(other, batch)[0])

    obs = jnp.asarray(np.random.default_rng(1).normal(size=(5, 3)), jnp.float32)
    act = jax.jit(lambda a, o, k, d: a.sample_actions(o, k, d), static_argnums=3)
    for deterministic in (False, True):
        actions = act(new, obs, jax.random.key(0), deterministic)
        assert actions.shape == (5, needs["offline"].horizon * 2)
        assert float(jnp.abs(actions).max()) <= 1.0
        np.testing.assert_array_equal(actions, act(new, obs, jax.random.key(0), deterministic))
    q = jax.jit(lambda a, o, x: a.q_values(o, x))(new, obs, actions)
    assert q.shape == (5,)

    switched = new.on_switch(config)
    assert type(switched) is type(new)
    online_batch = batch_for(needs["online"], seed=1)
    if needs["online"].loop == "off_policy":  # on-policy agents update on rollouts online
        _, metrics = update(switched, online_batch)
        assert all(np.isfinite(v) for v in metrics.values())

    save_checkpoint(tmp_path / "ckpt", new, {"updates": UTD})
    template = spec.agent_cls.create(config, OBS, ACT, 99)
    restored, progress = load_checkpoint(tmp_path / "ckpt", template)
    assert progress == {"updates": UTD} and leaves_equal(restored, new)
    # The online update donates the agent's buffers: after the switch of a restored agent (a
    # resumed run), no two leaves may share one (TD3+BC's switch step did).
    arrays = [x for x in jax.tree.leaves(restored.on_switch(config)) if not is_key(x)]
    assert len({x.unsafe_buffer_pointer() for x in arrays}) == len(arrays)
    wider = spec.agent_cls.create(tiny(algo, hidden_dims=(9, 9), **changes), OBS, ACT, 3)
    with pytest.raises(ValueError, match="different configuration"):
        load_checkpoint(tmp_path / "ckpt", wider)


@pytest.mark.parametrize("case", FINE_TUNED)
def test_each_kind_of_agent_fine_tunes_from_the_cli(case, tmp_path):
    """`o2o train` offline -> switch -> online; the online buffer holds every field the agent
    declared for the online phase (on-policy agents keep none)."""
    algo, changes = CASES[case]
    out = tmp_path / "run"
    flags = [
        f"--algo {algo} --task hopper --dataset {hopper_dataset(tmp_path)} --offline-steps 20",
        "--online-steps 10 --eval-interval 10 --eval-episodes 2 --agent.start-steps 5",
        f"--agent.utd-ratio 1 --out {out}",
    ]
    for name, value in dataclasses.asdict(tiny(algo, **changes)).items():
        if value != getattr(AGENTS[algo].default_config, name):
            flag = f"--agent.{name.replace('_', '-')}"
            flags.append(
                f"{flag} {' '.join(map(str, value))}"
                if isinstance(value, tuple)
                else f"{flag} {value}"
            )
    main(["train", *" ".join(flags).split()])
    phases = [r["phase"] for r in read_metrics(out)]
    assert phases == ["offline"] * 3 + ["online"] * 2
    config = load_config(out)
    hash(config.agent)  # static under jit: JSON lists must come back as tuples
    assert config.preset == AGENTS[algo].default_preset
    env = gym.make("Hopper-v5")
    agent = AGENTS[algo].agent_cls.create(config.agent, env.observation_space, env.action_space, 0)
    needs = agent.needs("online")
    if EXPORTABLE:  # the fine-tuned policy as ONNX; the command checks it against o2o's
        main(["export", str(out)])  # exits with status 2 if the actions differ
        assert (out / "policy.onnx").exists()
    if needs.loop == "on_policy":
        with pytest.raises(ValueError, match="on-policy"):
            replay_transitions(out)
        return
    replay = replay_transitions(out)
    assert needs.batch_fields <= set(replay) and (needs.horizon > 1) == ("ends" in replay)


def test_presets_per_task_family_and_dataset():
    """Each algorithm's recipes by name, and the one `o2o train` picks for a task: the
    dataset's own, else the task's family's, else the default."""
    from o2o.agents.awac import AWAC_ANTMAZE, AWAC_LOCOMOTION
    from o2o.agents.cql import CQL_ANTMAZE, CQL_LOCOMOTION
    from o2o.agents.fql import FQL_MANIPULATION, FQL_PUZZLE
    from o2o.agents.idql import IDQL_ANTMAZE, IDQL_LOCOMOTION
    from o2o.agents.iql import IQL_ANTMAZE, IQL_LOCOMOTION
    from o2o.agents.sac import EDAC, RLPD, RLPD_NAVIGATION, SAC_N
    from o2o.agents.td3bc import REBRAC, REBRAC_NAVIGATION
    from o2o.train.pipeline import default_config, task_preset

    families = {
        "rlpd": (RLPD, RLPD_NAVIGATION),
        "cql": (CQL_LOCOMOTION, CQL_ANTMAZE),
        "calql": (CQL_LOCOMOTION, CQL_ANTMAZE),
        "iql": (IQL_LOCOMOTION, IQL_ANTMAZE),
        "idql": (IDQL_LOCOMOTION, IDQL_ANTMAZE),
        "awac": (AWAC_LOCOMOTION, AWAC_ANTMAZE),
        "rebrac": (REBRAC, REBRAC_NAVIGATION),
    }
    for algo, spec in AGENTS.items():
        assert all(type(c) is type(spec.default_config) for c in spec.presets.values()), algo
        if algo in families:
            presets = spec.presets
            assert (presets["locomotion"], presets["navigation"]) == families[algo], algo
            assert task_preset(algo, "pointmaze-medium") == ("navigation", families[algo][1])
            assert task_preset(algo, "ant") == ("locomotion", families[algo][0])
        else:
            assert "navigation" not in spec.presets, algo
    assert (RLPD_NAVIGATION.backup_entropy, RLPD_NAVIGATION.num_min_critics) == (False, 1)
    assert RLPD_NAVIGATION.hidden_dims == (256, 256, 256)
    # SAC-N and EDAC: CORL's ensemble per dataset; ReBRAC: its penalties per dataset.
    sizes = {"hopper-medium": 500, "hopper-medium-replay": 200, "walker2d-medium": 20}
    for dataset, n in sizes.items():
        config = default_config("sac-n", task=dataset)
        assert config.preset == dataset and config.agent.num_critics == n
        assert config.agent.num_min_critics == n  # the min over all of them
    assert task_preset("sac-n", "halfcheetah-medium") == ("default", SAC_N)
    assert task_preset("sac-n", "hopper") == ("default", SAC_N)  # no dataset named
    edac = default_config("edac", task="walker2d-medium-expert").agent
    assert (edac.num_critics, edac.diversity_weight) == (10, 5.0)
    assert default_config("edac", task="hopper-medium").agent.num_critics == 50
    assert task_preset("edac", "halfcheetah-medium")[1] == EDAC
    rebrac = default_config("rebrac", task="hopper-medium-replay").agent
    assert (rebrac.actor_bc, rebrac.critic_bc, rebrac.batch_size) == (0.05, 0.5, 1024)
    assert REBRAC_NAVIGATION.discount == 0.999 and REBRAC_NAVIGATION.critic_lr == 5e-5
    # OGBench manipulation: FQL's alpha per suite (its README); QC's recipe is its OGBench one.
    assert task_preset("fql", "scene-play-singletask-task2") == ("manipulation", FQL_MANIPULATION)
    assert task_preset("fql", "puzzle-4x4-noisy-singletask") == ("puzzle-4x4", FQL_PUZZLE)
    assert (FQL_MANIPULATION.alpha, FQL_PUZZLE.alpha) == (300.0, 1000.0)
    assert task_preset("fql", "hopper-medium")[0] == "default"
    assert task_preset("qc", "cube-double-play")[0] == "manipulation"
    calql = default_config("calql", task="scene-play-singletask-task2").agent
    assert (calql.cql_alpha, calql.reward_scale, calql.hidden_dims) == (0.01, 10.0, (256,) * 4)
    assert default_config("calql", task="puzzle-4x4-play").agent.cql_alpha == 0.003
    # Another recipe by name; a name the algorithm lacks is refused with the list.
    assert default_config("cql", task="hopper-medium", preset="navigation").agent == CQL_ANTMAZE
    with pytest.raises(ValueError, match="its presets: locomotion, navigation"):
        default_config("cql", preset="antmaze")
