"""Multi-layer perceptron, the building block of every actor and critic."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import flax.linen as nn
import jax

default_init = nn.initializers.xavier_uniform  # the jaxrl/RLPD initialisation
ACTIVATIONS = {"relu": nn.relu, "gelu": nn.gelu}
Activation = Literal["relu", "gelu"]


class MLP(nn.Module):
    """Dense layers, each but the last (unless `activate_final`) followed by its activation
    and an optional LayerNorm.

    LayerNorm bounds Q extrapolation on out-of-distribution actions, which is what lets high
    update-to-data ratios stay stable (RLPD, Ball et al. 2023). Where it goes follows each
    reference: before the activation in RLPD's networks (`norm_first`, the default), after it
    in seohongpark/fql's and ColinQiyangLi/qc's (GELU there, ReLU in RLPD's).
    """

    hidden_dims: Sequence[int]
    activate_final: bool = False
    layer_norm: bool = False
    activation: Activation = "relu"
    norm_first: bool = True
    output_init_scale: float = 1.0  # of the last layer's Xavier-uniform variance

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        activation = ACTIVATIONS[self.activation]
        for i, size in enumerate(self.hidden_dims):
            last = i + 1 == len(self.hidden_dims)
            scale = self.output_init_scale if last else 1.0
            init = nn.initializers.variance_scaling(scale, "fan_avg", "uniform")
            x = nn.Dense(size, kernel_init=init)(x)
            if i + 1 < len(self.hidden_dims) or self.activate_final:
                if self.layer_norm and self.norm_first:
                    x = nn.LayerNorm()(x)
                x = activation(x)
                if self.layer_norm and not self.norm_first:
                    x = nn.LayerNorm()(x)
        return x
