"""Calibrated Q-learning (Nakamoto et al. 2023), as nakamotoo/Cal-QL (`JaxCQL`, `enable_calql`).

Cal-QL is CQL whose penalty stops pushing Q down below the behaviour policy's value: inside
the CQL regulariser only, Q at the policy's proposals (actions drawn from pi(.|s) and
pi(.|s')) is replaced by max(Q, G), where G is the Monte-Carlo return of the data transition
(discounted, from the transformed rewards). The TD target and random proposals are
unchanged. A Q that is already below G then gets no further push down, so the pre-trained
critic is calibrated (not below the data's returns) and the switch to online no longer sees
real returns look attractive against pessimistic values: the dip shrinks.

Batches carry `mc_returns`: the pipeline computes them for the dataset (episode splits at
terminals, time limits and broken trajectories; an all-failure sparse episode gets the
constant r_fail / (1 - gamma), as the reference's `calc_return_to_go`), and the online loop
computes them for each online episode when it ends, as the reference's sampler does with
`use_mc=True` (CORL stores 0 instead). `calql_bound_rate` logs the fraction of floored values.

Recipe: CQL's (`CALQL_LOCOMOTION` = `CQL_LOCOMOTION`, `CALQL_ANTMAZE` = `CQL_ANTMAZE`, which is
Cal-QL's `scripts/run_antmaze.sh`: Lagrange with gap 0.8, max backup, 4x256, mixing ratio 0.5).
On OGBench manipulation (`manipulation` and the suite keys), the FQL paper's runs of the official
code: `CQL_MANIPULATION` (fixed weight 0.01, 0.003 on puzzle-4x4; rewards x 10; max backup;
4x256). Plain `cql` has no manipulation recipe: the paper tuned these values for Cal-QL only.
Deviations: the reference fine-tunes by collecting one whole trajectory and then training
len(trajectory) steps; o2o keeps updating every environment step (UTD 1) and stores each online
episode when it ends, so a minibatch never holds a transition whose return is not yet known.
The reference's reward scaling 10 r - 5 for AntMaze belongs to the task registry; o2o's sparse
PointMaze tasks use r - 1 for every agent.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from o2o.agents.base import Needs, Phase, register
from o2o.agents.cql import CQL, CQL_ANTMAZE, CQL_LOCOMOTION, CQL_MANIPULATION, CQL_SUITES


class CalQL(CQL):
    def needs(self, phase: Phase) -> Needs:
        """CQL's, with `mc_returns` in every batch, offline and online."""
        needs = super().needs(phase)
        return dataclasses.replace(needs, batch_fields=needs.batch_fields | {"mc_returns"})

    def bound_policy_values(
        self, q_pi: jax.Array, batch: dict[str, jax.Array]
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """max(Q, G) at the policy's proposals, G the transition's Monte-Carlo return."""
        if "mc_returns" not in batch:
            raise KeyError(
                "calql needs batch['mc_returns'] (Monte-Carlo returns); train it through "
                "o2o's pipeline, which adds them, or add them to your batches"
            )
        floor = batch["mc_returns"][None, :, None]
        return jnp.maximum(q_pi, floor), {"calql_bound_rate": jnp.mean(q_pi < floor)}


CALQL_LOCOMOTION = CQL_LOCOMOTION
CALQL_ANTMAZE = CQL_ANTMAZE

register(
    "calql",
    CalQL,
    {
        "locomotion": CALQL_LOCOMOTION,
        "navigation": CALQL_ANTMAZE,
        "manipulation": CQL_MANIPULATION,
        **CQL_SUITES,
    },
    "Cal-QL: CQL with its penalty floored at MC returns",
)
