"""Environments: the task registry."""
