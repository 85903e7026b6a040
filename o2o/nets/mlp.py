"""Multi-layer perceptron, the building block of every actor and critic."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax

default_init = nn.initializers.xavier_uniform  # the jaxrl/RLPD initialisation


class MLP(nn.Module):
    """Dense layers with an optional LayerNorm between each Dense and its activation.

    LayerNorm placement follows RLPD (Ball et al. 2023): it bounds Q extrapolation on
    out-of-distribution actions, which is what lets high update-to-data ratios stay stable.
    """

    hidden_dims: Sequence[int]
    activate_final: bool = False
    layer_norm: bool = False
    activation: Callable[[jax.Array], jax.Array] = nn.relu

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i, size in enumerate(self.hidden_dims):
            x = nn.Dense(size, kernel_init=default_init())(x)
            if i + 1 < len(self.hidden_dims) or self.activate_final:
                if self.layer_norm:
                    x = nn.LayerNorm()(x)
                x = self.activation(x)
        return x
