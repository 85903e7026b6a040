"""Agents: one file per algorithm, registered by name."""

from o2o.agents import awac, bc, calql, cql, iql, sac, td3bc  # noqa: F401  (each registers its algorithms)
from o2o.agents.base import AGENTS, get_agent

__all__ = ["AGENTS", "get_agent"]
