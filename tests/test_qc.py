"""Q-chunking: the chunked critic's loss and the masked prior loss by hand, best-of-N, the
bimodal task at horizon 1, open-loop execution of chunks online and in evaluation (with the
chunked Q-bias), and the frozen prior online."""

import dataclasses

import flax.struct
import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from agent_helpers import bimodal_batch, bimodal_scores, np_, optimised
from gymnasium.spaces import Box

from o2o.agents.base import Needs
from o2o.agents.qc import QC, QCConfig
from o2o.data.buffer import MixedSampler
from o2o.envs.tasks import Task
from o2o.logging import read_metrics
from o2o.nets.ensemble import StateActionValue
from o2o.nets.policies import flow_actions, flow_matching_loss
from o2o.train.evaluate import _chunk_windows
from o2o.train.online import OnlineLoop

OBS = Box(-np.inf, np.inf, (3,), np.float32)
ACT = Box(-1.0, 1.0, (2,), np.float32)
HIDDEN = (16,)


def tiny(**overrides) -> QC:
    small = {"hidden_dims": HIDDEN, "horizon": 2, "num_samples": 4, "flow_steps": 2}
    return QC.create(QCConfig(**small | overrides), OBS, ACT, 0)


def window_batch() -> dict[str, np.ndarray]:
    """4 windows of 2 steps; row 1 crosses an episode end after its first step (reward 0 and
    valid 0 at step 1, as the buffer returns it) and row 2 ends at a terminal (mask 0)."""
    rng = np.random.default_rng(0)
    batch = {
        "observations": rng.normal(size=(4, 3)),
        "actions": rng.uniform(-1, 1, (4, 2, 2)),
        "rewards": [[1.0, 2.0], [0.5, 0.0], [-1.0, 3.0], [2.0, -0.5]],
        "valid": [[1, 1], [1, 0], [1, 1], [1, 1]],
        "masks": [1, 1, 0, 1],
        "next_observations": rng.normal(size=(4, 3)),
    }
    return {k: np.asarray(v, np.float32) for k, v in batch.items()}


def member_q(params, observations, chunks, member: int) -> np.ndarray:
    """Critic `member`'s Q, applied on its own."""
    own = jax.tree.map(lambda p: p[member], params)
    return np_(
        StateActionValue(HIDDEN, True, "gelu", norm_first=False).apply(own, observations, chunks)
    )


@pytest.mark.parametrize("q_agg", ["mean", "min"])
def test_critic_loss_by_hand(q_agg):
    agent = tiny(q_agg=q_agg, discount=0.9)
    # Target critics unlike the critics, so the test sees which ones the target uses.
    target = jax.tree.map(lambda p: 1.5 * p, agent.critic.params)
    agent = agent.replace(target_critic_params=target)
    batch, key = window_batch(), jax.random.key(3)
    loss, _ = jax.jit(QC.critic_loss)(agent, agent.critic.params, batch, key)

    next_obs = batch["next_observations"]
    next_chunks = jax.jit(QC.sample_actions)(agent, next_obs, key)  # its rule at s_{t+h}
    next_qs = np.stack([member_q(target, next_obs, next_chunks, i) for i in range(2)])
    next_q = next_qs.min(0) if q_agg == "min" else next_qs.mean(0)
    r = np_(batch["rewards"])
    y = r[:, 0] + 0.9 * r[:, 1] + 0.9**2 * batch["masks"] * next_q
    chunks = batch["actions"].reshape(4, 4)  # step-major: (a_t, a_t+1)
    q = np.stack([member_q(agent.critic.params, batch["observations"], chunks, i) for i in (0, 1)])
    expected = np.mean((q - y) ** 2 * batch["valid"][:, -1])  # row 1 drops out
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_prior_loss_weights_each_step_by_valid():
    agent, batch, key = tiny(), window_batch(), jax.random.key(4)
    loss, _ = agent.prior_loss(agent.actor.params, batch, key)
    errors = flow_matching_loss(
        agent.actor.apply_fn,
        agent.actor.params,
        batch["observations"],
        batch["actions"].reshape(4, 4),
        key,
    )
    expected = np.mean(np_(errors).reshape(4, 2, 2) * batch["valid"][..., None])
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_best_of_n_keeps_the_candidate_with_the_highest_q():
    agent = tiny(num_samples=8)
    obs = jax.random.normal(jax.random.key(0), (6, 3))
    key = jax.random.key(5)
    chosen = agent.sample_actions(obs, key)
    assert chosen.shape == (6, 4)  # the whole chunk, flattened
    obs_n = jnp.repeat(obs[:, None], 8, axis=1)
    noise = jax.random.normal(key, (6, 8, 4))
    candidates = flow_actions(agent.actor.apply_fn, agent.actor.params, obs_n, noise, 2)
    best = np.asarray(agent.q_values(obs_n, candidates)).argmax(1)
    assert len(set(best.tolist())) > 1  # not always the same position
    np.testing.assert_allclose(chosen, candidates[np.arange(6), best], rtol=1e-6)


def test_horizon_one_best_of_n_solves_the_bimodal_task():
    """30% of the data acts at random: cloning it scores 0.7 at best (this short-trained
    prior much less), a Gaussian about 0 (test_flow.py); the best of 8 prior samples by Q
    nearly always hits a mode, and both modes stay in use. Single-step batches are windows of
    one step."""
    config = QCConfig(horizon=1, hidden_dims=(64, 64), num_samples=8, flow_steps=5)
    agent = QC.create(config, OBS, ACT, 0)

    def step(agent, key):
        return agent.update(bimodal_batch(key, n=128, explore=0.3))

    run = optimised(lambda a, keys: jax.lax.scan(step, a, keys))
    agent, info = run(agent, jax.random.split(jax.random.key(1), 500))
    assert float(info["critic_loss"][-100:].mean()) < float(info["critic_loss"][:100].mean())
    score, minority = bimodal_scores(agent)
    assert score > 0.8 and minority > 0.3
    prior_only = agent.replace(config=dataclasses.replace(agent.config, num_samples=1))
    assert bimodal_scores(prior_only)[0] < score - 0.1


def changed(before, after) -> bool:
    leaves = zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True)
    return any(not np.array_equal(x, y) for x, y in leaves)


def test_on_switch_freezes_the_prior_and_the_critic_keeps_learning():
    batch = {k: v[None] for k, v in window_batch().items()}
    update = jax.jit(QC.update)
    frozen = tiny().on_switch()
    after, _ = update(frozen, batch)
    assert not changed(frozen.actor.params, after.actor.params)
    assert changed(frozen.critic.params, after.critic.params)
    learning = tiny(freeze_prior=False).on_switch()
    assert changed(learning.actor.params, update(learning, batch)[0].actor.params)


@pytest.mark.parametrize(
    "field, value", [("horizon", 0), ("num_samples", 0), ("q_agg", "max"), ("tau", 0.0)]
)
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        QCConfig(**{field: value})


def test_batches_must_be_windows_of_the_horizon():
    agent, batch = tiny(), window_batch()
    single = {k: v[:, 0] if k in ("actions", "rewards") else v for k, v in batch.items()}
    del single["valid"]
    with pytest.raises(ValueError, match="windows of 2 steps"):
        agent.prior_loss(agent.actor.params, single, jax.random.key(0))
    longer = batch | {"valid": np.ones((4, 3), np.float32)}
    with pytest.raises(ValueError, match="got windows of 3"):
        agent.prior_loss(agent.actor.params, longer, jax.random.key(0))


def test_chunk_windows_by_hand():
    actions = np.arange(5, dtype=np.float32)[:, None]
    ends = np.array([0, 1, 0, 0, 1], bool)
    windows, whole, index = _chunk_windows(actions, ends, 2)
    np.testing.assert_array_equal(windows, [[0, 1], [1, 2], [2, 3], [3, 4], [4, 4]])
    np.testing.assert_array_equal(whole, [True, False, True, True, False])
    np.testing.assert_array_equal(index, [0, 1, 0, 1, 2])


# Open-loop execution: a probe environment whose observation is the step count t (7 steps an
# episode, cut by the time limit) and whose reward is the action it receives, and a stub
# agent whose chunk at observation t is (0.1 t, 0.1 t + 0.01, 0.1 t + 0.02).
PROBE = "o2o-test/ChunkProbe-v0"


class ProbeEnv(gym.Env):
    observation_space = Box(-np.inf, np.inf, (1,), np.float32)
    action_space = Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.full(1, self.t, np.float32), float(action[0]), False, False, {}


if PROBE not in gym.registry:
    gym.register(PROBE, entry_point=ProbeEnv)


@dataclasses.dataclass(frozen=True)
class StubConfig:
    start_steps: int = 4  # acting with the agent meanwhile (no random warm-up: `needs`)
    utd_ratio: int = 1
    batch_size: int = 4
    offline_ratio: float = 0.0
    discount: float = 0.5


class ChunkStub(flax.struct.PyTreeNode):
    updates: jax.Array
    config: StubConfig = flax.struct.field(pytree_node=False)

    def update(self, batch):
        assert batch["actions"].shape[-2:] == (3, 1)  # windows of the chunk's length
        return self.replace(updates=self.updates + 1), {}

    def sample_actions(self, observations, key, deterministic=False):
        return 0.1 * observations + 0.01 * jnp.arange(3)

    def needs(self, phase):
        return Needs(horizon=3, random_warmup=False)

    def q_values(self, observations, actions):
        return observations[..., 0]  # Q = t, to tell which steps the Q-bias reads


EPISODE_ACTIONS = [0.0, 0.01, 0.02, 0.3, 0.31, 0.32, 0.6]  # chunks drawn at t = 0, 3, 6


def test_chunks_run_open_loop_online_and_in_evaluation(tmp_path):
    task = Task("probe", PROBE, 0.0, 1.0, "test", max_episode_steps=7)
    agent = ChunkStub(jnp.int32(0), StubConfig())
    loop = OnlineLoop(
        task,
        agent,
        MixedSampler.create(None),
        tmp_path,
        online_steps=14,
        seed=0,
        eval_interval=14,
        eval_episodes=1,
        needs=agent.needs("online"),
    )
    progress = loop.run()
    data = {k: np.asarray(v) for k, v in loop.buffer.data.items()}
    # Every step stored; the queue is cleared when the episode ends (at t = 7 a kept queue
    # would give 0.61), and the warm-up acted with the agent.
    np.testing.assert_allclose(data["actions"][:, 0], EPISODE_ACTIONS * 2, atol=1e-6)
    np.testing.assert_array_equal(np.flatnonzero(data["ends"]), [6, 13])
    assert int(loop.agent.updates) == progress.updates == 10  # after the 4 warm-up steps

    # Evaluation ran the same chunks; Q-bias reads the chunks' starts t = 0 and 3 (t = 6's
    # chunk is cut by the end, which the truncated episode's last 2 steps are anyway).
    rewards = np.array(EPISODE_ACTIONS)
    returns = [sum(0.5**k * r for k, r in enumerate(rewards[t:])) for t in (0, 3)]
    for record in read_metrics(tmp_path):
        assert record["return_mean"] == pytest.approx(rewards.sum(), abs=1e-5)
        assert record["q_pred_mean"] == pytest.approx(1.5)
        assert record["q_mc_mean"] == pytest.approx(np.mean(returns), abs=1e-5)


def test_windows_run_through_successes_inside_a_recording():
    """OGBench single-task data marks a success terminal inside a play recording that goes
    on: QC's reference (`sample_sequence`) keeps windows across it (every step valid, the
    mask 0, the rewards summed), so windows starting at or before a success are trained. Where
    terminals end episodes (D4RL), a window stops at one, and it stops at a break either way."""
    from o2o.data.dataset import Dataset
    from o2o.envs.tasks import get_task
    from o2o.train.pipeline import dataset_buffers

    states = np.arange(9, dtype=np.float32)[:, None]
    next_states = states + 1
    next_states[5] = 99.0  # a break: row 6 starts another recording
    data = Dataset.from_arrays(
        {
            "observations": states,
            "actions": np.zeros((9, 2), np.float32),
            "rewards": np.arange(9, dtype=np.float32),
            "next_observations": next_states,
            "terminals": np.arange(9) == 1,  # the success at row 1
        }
    )
    hopper = get_task("hopper")
    needs = {"offline": Needs(horizon=3)}

    def windows(task):
        buffer = dataset_buffers(data, task, 0.99, needs)["offline"]
        batch = buffer.sample(jax.random.key(0), 300, horizon=3)
        starts = np.asarray(batch["observations"][:, 0]).astype(int)
        first = {t: int(np.flatnonzero(starts == t)[0]) for t in (0, 1, 4)}
        return {
            t: (batch["valid"][i].tolist(), batch["rewards"][i].tolist(), float(batch["masks"][i]))
            for t, i in first.items()
        }

    inside = windows(dataclasses.replace(hopper, terminals_inside_recordings=True))
    assert inside[0] == ([1, 1, 1], [0, 1, 2], 0.0)  # through the success: no bootstrap
    assert inside[1] == ([1, 1, 1], [1, 2, 3], 0.0)  # starting at the success (untrained before)
    assert inside[4] == ([1, 1, 0], [4, 5, 0], 1.0)  # the break ends it
    ending = windows(hopper)
    assert ending[0] == ([1, 1, 0], [0, 1, 0], 0.0)
    assert ending[1] == ([1, 0, 0], [1, 0, 0], 0.0)
    assert ending[4] == inside[4]
