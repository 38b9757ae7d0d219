"""raftlog.agent: one node built from its config, started in order, stopped in reverse."""

from raftlog.agent.agent import Agent, Step

__all__ = ["Agent", "Step"]
