"""Helpers shared by the agents' by-hand tests (imported as a module: pytest puts tests/ on
the path)."""

import numpy as np
import optax


def random_batch(
    seed: int,
    n: int = 8,
    utd: int | None = None,
    *,
    boundary_actions: bool = False,
    next_actions: bool = False,
    terminals: int = 1,
) -> dict[str, np.ndarray]:
    """A random float32 batch in numpy (eager JAX ops would compile once per new shape).

    The first `terminals` rows have mask 0; `boundary_actions` puts rows 0 and 1 at the action
    bounds +1 and -1 (where a tanh likelihood would be infinite); `next_actions` adds dataset
    next actions.
    """
    rng = np.random.default_rng(seed)
    shape = (n,) if utd is None else (utd, n)
    actions = rng.uniform(-1, 1, (*shape, 2))
    if boundary_actions:
        actions[..., 0, :], actions[..., 1, :] = 1.0, -1.0
    masks = np.ones(shape)
    masks[..., :terminals] = 0.0
    b = {
        "observations": rng.normal(size=(*shape, 3)),
        "actions": actions,
        "rewards": rng.normal(size=shape),
        "next_observations": rng.normal(size=(*shape, 3)),
        "masks": masks,
    }
    if next_actions:
        b["next_actions"] = rng.uniform(-1, 1, (*shape, 2))
    return {k: v.astype(np.float32) for k, v in b.items()}


def hopper_dataset(tmp_path, n: int = 200):
    """`n` random Hopper-shaped transitions (one episode), saved natively; its path."""
    from o2o.data.dataset import Dataset
    from o2o.data.formats import save_native

    rng = np.random.default_rng(0)
    data = {
        "observations": rng.normal(size=(n, 11)).astype(np.float32),
        "actions": rng.uniform(-1, 1, (n, 3)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "next_observations": rng.normal(size=(n, 11)).astype(np.float32),
        "terminals": np.zeros(n, bool),
    }
    return save_native(Dataset.from_arrays(data), tmp_path / "hopper.npz")


def trained_run(tmp_path, algo: str, holdout_episodes: int = 0, steps: int = 5):
    """A run directory of `algo` trained offline for `steps` updates with 8x8 networks on 400
    random Hopper-shaped transitions (`hopper_dataset`), no online phase."""
    from o2o.cli import main

    out = tmp_path / "run"
    data = hopper_dataset(tmp_path, n=400)
    flags = f"--algo {algo} --task hopper --dataset {data} --offline-steps {steps}"
    flags += f" --online-steps 0 --eval-interval {steps} --eval-episodes 1"
    flags += f" --agent.hidden-dims 8 8 --holdout-episodes {holdout_episodes}"
    main(["train", *flags.split(), "--out", str(out)])
    return out


def np_(x) -> np.ndarray:
    """float64 numpy, the precision the by-hand losses are computed in."""
    return np.asarray(x, np.float64)


def sgd(state):
    """The same TrainState under plain SGD at rate 1, so a step is exactly minus the gradient."""
    tx = optax.sgd(1.0)
    return state.replace(tx=tx, opt_state=tx.init(state.params))


BIMODAL_MODES = (-0.8, 0.8)


def bimodal_batch(key, n: int = 256, utd: int = 1, explore: float = 0.3) -> dict:
    """A one-step task whose optimal action is bimodal, as a jnp batch [utd, n, ...].

    Observations are N(0, I) in 3-d and irrelevant; the episode ends after one step (mask 0).
    Reward 1 when both action coordinates lie within 0.25 of the same mode, -0.8 or +0.8, else 0
    (the bound 1 is inside the zone: float rounding at the zone's edge decides nothing).
    A fraction `explore` of rows takes uniform random actions (so a critic sees bad actions);
    the rest take a mode (chosen by a coin) plus N(0, 0.05) noise. A Gaussian policy fitted
    to this data puts its mean near 0, between the modes, and scores about 0."""
    import jax
    import jax.numpy as jnp

    k_obs, k_mode, k_noise, k_rand, k_explore = jax.random.split(key, 5)
    shape = (utd, n)
    mode = jnp.where(jax.random.bernoulli(k_mode, 0.5, shape), 0.8, -0.8)[..., None]
    actions = jnp.clip(mode + 0.05 * jax.random.normal(k_noise, (*shape, 2)), -1, 1)
    random = jax.random.uniform(k_rand, (*shape, 2), minval=-1, maxval=1)
    actions = jnp.where(jax.random.bernoulli(k_explore, explore, shape)[..., None], random, actions)
    observations = jax.random.normal(k_obs, (*shape, 3))
    return {
        "observations": observations,
        "actions": actions,
        "rewards": bimodal_reward(actions),
        "next_observations": observations,
        "masks": jnp.zeros(shape),
    }


def bimodal_reward(actions):
    """1 where both coordinates are within 0.25 of the same mode (-0.8 or +0.8), else 0."""
    import jax.numpy as jnp

    near = [jnp.all(jnp.abs(actions - m) < 0.25, axis=-1) for m in BIMODAL_MODES]
    return (near[0] | near[1]).astype(jnp.float32)


def bimodal_scores(agent) -> tuple[float, float]:
    """Mean reward of the agent's actions on fresh states (deterministic where that means
    something), and the share of the minority mode."""
    import jax

    obs = jax.random.normal(jax.random.key(7), (512, 3))
    actions = agent.sample_actions(obs, jax.random.key(8), deterministic=True)
    positive = float((actions.mean(-1) > 0).mean())
    return float(bimodal_reward(actions).mean()), min(positive, 1 - positive)


def optimised(fn):
    """`jax.jit(fn)` compiled with XLA's backend optimisation, for the known-answer tests that
    run thousands of updates: the session compiles without it (tests/conftest.py), which halves
    compile times but makes programs run about four times slower, and for these running costs
    more than compiling."""
    import jax

    def call(*args):
        lowered = jax.jit(fn).lower(*args)
        return lowered.compile({"xla_backend_optimization_level": "2"})(*args)

    return call
