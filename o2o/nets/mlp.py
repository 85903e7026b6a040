"""Multi-layer perceptron, the building block of every actor and critic."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import flax.linen as nn
import jax

default_init = nn.initializers.xavier_uniform  # the jaxrl/RLPD initialisation
ACTIVATIONS = {"relu": nn.relu, "gelu": nn.gelu, "silu": nn.silu}
Activation = Literal["relu", "gelu", "silu"]
Init = Literal["xavier", "torch"]


def dense(features: int, fan_in: int, init: Init = "xavier", scale: float = 1.0) -> nn.Dense:
    """A linear layer initialised as jaxrl's (`xavier`: a Xavier-uniform kernel, its variance
    times `scale`, zero bias) or as PyTorch's `nn.Linear` (`torch`: kernel and bias uniform in
    +-1/sqrt(fan_in), the kernel's variance times `scale`), the PyTorch references' networks."""
    if init == "xavier":
        return nn.Dense(
            features, kernel_init=nn.initializers.variance_scaling(scale, "fan_avg", "uniform")
        )
    bound = fan_in**-0.5
    return nn.Dense(
        features,
        kernel_init=nn.initializers.variance_scaling(scale / 3, "fan_in", "uniform"),
        bias_init=lambda key, shape, dtype=jax.numpy.float32: jax.random.uniform(
            key, shape, dtype, -bound, bound
        ),
    )


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
    output_init_scale: float = 1.0  # of the last layer's initial variance
    weight_init: Init = "xavier"  # `dense`'s

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        activation = ACTIVATIONS[self.activation]
        for i, size in enumerate(self.hidden_dims):
            last = i + 1 == len(self.hidden_dims)
            scale = self.output_init_scale if last else 1.0
            x = dense(size, x.shape[-1], self.weight_init, scale)(x)
            if i + 1 < len(self.hidden_dims) or self.activate_final:
                if self.layer_norm and self.norm_first:
                    x = nn.LayerNorm()(x)
                x = activation(x)
                if self.layer_norm and not self.norm_first:
                    x = nn.LayerNorm()(x)
        return x
