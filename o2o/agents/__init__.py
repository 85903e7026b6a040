"""Agents: one file per algorithm, registered by name."""

from o2o.agents import sac  # noqa: F401  (registers sac, rlpd)
from o2o.agents.base import AGENTS, get_agent

__all__ = ["AGENTS", "get_agent"]
