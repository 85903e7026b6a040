"""Agents: one file per algorithm, registered by name."""

from o2o.agents import (  # noqa: F401  (each registers its algorithms)
    awac,
    bc,
    calql,
    cql,
    flow_bc,
    fpo,
    fql,
    idql,
    iql,
    qc,
    sac,
    td3bc,
)
from o2o.agents.base import AGENTS, get_agent

__all__ = ["AGENTS", "get_agent"]
