"""Device-resident replay storage and batch sampling that never leaves the device.

`ReplayBuffer` is an immutable pytree: `add` and `sample` are pure and jittable, so an
environment step, its insertion and a whole block of gradient updates run in one jitted call.
`MixedSampler` draws each batch from offline and online data at any ratio, or a ratio
scheduled over steps, without recompiling when the ratio changes.

Chunked agents (QC: a `horizon` > 1 on their config) sample windows of `horizon` consecutive
rows instead of single transitions (`ReplayBuffer.sample_windows`); their buffers carry an
`ends` field, 1 at the last step of each episode (terminal, timeout or broken trajectory).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

Batch = dict[str, jax.Array]


class ReplayBuffer(flax.struct.PyTreeNode):
    """A ring of `capacity` transitions; once full, the oldest are overwritten."""

    data: Batch
    size: jax.Array  # int32 scalar: number of valid rows
    cursor: jax.Array  # int32 scalar: next row to write

    @classmethod
    def create(cls, example: dict[str, Any], capacity: int) -> ReplayBuffer:
        """Empty buffer whose rows have the shapes and dtypes of `example` (one transition)."""
        data = {
            k: jnp.zeros((capacity, *np.shape(v)), jnp.asarray(v).dtype) for k, v in example.items()
        }
        return cls(data=data, size=jnp.int32(0), cursor=jnp.int32(0))

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> ReplayBuffer:
        """A full buffer holding `arrays` (e.g. an offline dataset's transitions)."""
        n = len(next(iter(arrays.values())))
        data = {k: jnp.asarray(v) for k, v in arrays.items()}
        return cls(data=data, size=jnp.int32(n), cursor=jnp.int32(0))

    @property
    def capacity(self) -> int:
        return next(iter(self.data.values())).shape[0]

    def add(self, transition: dict[str, jax.Array]) -> ReplayBuffer:
        """Write one transition at the cursor."""
        data = {
            k: jax.lax.dynamic_update_index_in_dim(
                v, jnp.asarray(transition[k], v.dtype), self.cursor, 0
            )
            for k, v in self.data.items()
        }
        return self.replace(
            data=data,
            size=jnp.minimum(self.size + 1, self.capacity),
            cursor=(self.cursor + 1) % self.capacity,
        )

    def gather(self, indices: jax.Array) -> Batch:
        return jax.tree.map(lambda x: x[indices], self.data)

    def sample_indices(self, key: jax.Array, n: int) -> jax.Array:
        """`n` row indices drawn uniformly, with replacement, from the valid rows."""
        return jax.random.randint(key, (n,), 0, jnp.maximum(self.size, 1))

    def sample(self, key: jax.Array, n: int, horizon: int = 1) -> Batch:
        """`n` transitions, or with `horizon` > 1 `n` windows (`sample_windows`)."""
        if horizon > 1:
            return self.sample_windows(key, n, horizon)
        return self.gather(self.sample_indices(key, n))

    def sample_windows(self, key: jax.Array, n: int, horizon: int) -> Batch:
        """`n` windows of `horizon` consecutive rows in insertion order (across the ring's
        wrap-around), their starts drawn uniformly from the valid rows. Per window:

        - `observations` [n, obs]: the first step's observation;
        - `actions` [n, h, A]: the logged actions of the h steps;
        - `valid` [n, h]: 1 at step i unless an episode ended at a step before i or row i was
          never written (past the newest row);
        - `rewards` [n, h]: the steps' rewards, 0 where not valid (undiscounted: the agent
          applies its own discount);
        - `masks` [n]: the bootstrap mask at the chunk's end, the min over the valid steps'
          masks (0 if a terminal ends the chunk);
        - `next_observations` [n, obs]: the next observation of the last valid step, which is
          s_{t+h} when every step is valid;
        - any other field (e.g. `mc_returns`): the first step's.

        Actions of steps that are not valid are whatever rows follow: weight them out.
        """
        if "ends" not in self.data:
            raise ValueError(
                "sampling windows of consecutive rows needs an `ends` field (1 at each "
                "episode's last step) in the buffer"
            )
        oldest = (self.cursor - self.size) % self.capacity
        steps = self.sample_indices(key, n)[:, None] + jnp.arange(horizon)  # insertion order
        rows = (oldest + steps) % self.capacity
        written = steps < self.size
        ends = self.data["ends"][rows] > 0
        ended_before = jnp.cumsum(ends, axis=1) - ends > 0
        valid = written & ~ended_before
        last = rows[jnp.arange(n), valid.sum(1) - 1]
        start = self.gather(rows[:, 0])
        return start | {
            "actions": self.data["actions"][rows],
            "valid": valid.astype(jnp.float32),
            "rewards": jnp.where(valid, self.data["rewards"][rows], 0.0),
            "masks": jnp.where(valid, self.data["masks"][rows], 1.0).min(1),
            "next_observations": self.data["next_observations"][last],
        }

    def grown(self, capacity: int) -> ReplayBuffer:
        """A larger buffer holding the same transitions, oldest first (host-side copy)."""
        if capacity < self.capacity:
            raise ValueError(f"cannot shrink a buffer from {self.capacity} to {capacity} rows")
        n, start = int(self.size), int(self.cursor) if int(self.size) == self.capacity else 0
        data = {}
        for k, v in self.data.items():
            rows = np.roll(np.asarray(v), -start, axis=0)[:n]
            data[k] = jnp.zeros((capacity, *v.shape[1:]), v.dtype).at[:n].set(rows)
        return self.replace(data=data, size=jnp.int32(n), cursor=jnp.int32(n % capacity))


class MixedSampler(flax.struct.PyTreeNode):
    """Draws batches from offline and online data, a fraction `offline_ratio` from offline.

    The ratio is a pytree leaf (changing it does not recompile); with `schedule` set, the
    ratio is `schedule(step)` instead, e.g. an optax schedule decaying the offline share; with
    `proportional`, it is offline size / (offline size + online size), i.e. uniform sampling
    over the union of both (Cal-QL's `mixing_ratio` < 0; CORL's one pre-filled buffer).
    Within each minibatch a row's source is set by its position, independently of the
    indices drawn, so any ratio works, not only 0.5 (RLPD's interleaving of two half batches
    only supports 0.5: ikostrikov/rlpd#4).
    """

    offline: ReplayBuffer | None
    offline_ratio: jax.Array
    schedule: Callable[[jax.Array], jax.Array] | None = flax.struct.field(
        pytree_node=False, default=None
    )
    proportional: bool = flax.struct.field(pytree_node=False, default=False)

    @classmethod
    def create(
        cls,
        offline: ReplayBuffer | None,
        offline_ratio: float = 0.5,
        schedule: Callable[[jax.Array], jax.Array] | None = None,
        proportional: bool = False,
    ) -> MixedSampler:
        if not 0.0 <= offline_ratio <= 1.0:
            raise ValueError(f"offline_ratio must lie in [0, 1], got {offline_ratio}")
        if schedule is not None and proportional:
            raise ValueError("give a schedule or proportional mixing, not both")
        if offline is None:
            offline_ratio, schedule, proportional = 0.0, None, False
        return cls(
            offline=offline,
            offline_ratio=jnp.float32(offline_ratio),
            schedule=schedule,
            proportional=proportional,
        )

    def ratio(self, step: jax.Array, online_size: jax.Array | int = 0) -> jax.Array:
        """The offline share of a batch at online step `step`."""
        if self.offline is None:
            return jnp.float32(0.0)
        if self.proportional:
            offline_size = self.offline.size.astype(jnp.float32)
            return offline_size / (offline_size + jnp.asarray(online_size, jnp.float32))
        if self.schedule is not None:
            return jnp.clip(jnp.asarray(self.schedule(step), jnp.float32), 0.0, 1.0)
        return self.offline_ratio

    def sample(
        self, key: jax.Array, online: ReplayBuffer, n: int, step: jax.Array, horizon: int = 1
    ) -> Batch:
        """One minibatch of `n` rows (windows, with `horizon` > 1): the first round(ratio * n)
        from offline data, the rest from online."""
        batch = self.sample_minibatches(key, online, 1, n, step, horizon)
        return jax.tree.map(lambda x: x[0], batch)

    def sample_minibatches(
        self,
        key: jax.Array,
        online: ReplayBuffer,
        num: int,
        batch_size: int,
        step: jax.Array,
        horizon: int = 1,
    ) -> Batch:
        """`num` minibatches stacked on a leading axis, the input of a UTD block of updates.
        Every minibatch holds round(ratio * batch_size) offline rows (its first ones) and the
        rest online, as RLPD interleaves the two sources within each minibatch: the critic's
        steps and the actor's last one all see both."""

        def stacked(rows: Batch) -> Batch:
            return jax.tree.map(lambda x: x.reshape(num, batch_size, *x.shape[1:]), rows)

        n = num * batch_size
        if self.offline is None:
            return stacked(online.sample(key, n, horizon))
        key_off, key_on = jax.random.split(key)
        n_offline = jnp.round(self.ratio(step, online.size) * batch_size).astype(jnp.int32)
        from_offline = jnp.arange(n) % batch_size < n_offline  # the first rows of each minibatch
        rows = jax.tree.map(
            lambda a, b: jnp.where(from_offline.reshape(n, *[1] * (a.ndim - 1)), a, b),
            self.offline.sample(key_off, n, horizon),
            online.sample(key_on, n, horizon),
        )
        return stacked(rows)
