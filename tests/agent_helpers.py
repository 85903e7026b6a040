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


def np_(x) -> np.ndarray:
    """float64 numpy, the precision the by-hand losses are computed in."""
    return np.asarray(x, np.float64)


def sgd(state):
    """The same TrainState under plain SGD at rate 1, so a step is exactly minus the gradient."""
    tx = optax.sgd(1.0)
    return state.replace(tx=tx, opt_state=tx.init(state.params))
