"""Reinforcement-learning machinery: a compact TD3/DDPG agent for gymnasium continuous control."""

from priorlab.rl.td3 import Agent, AgentConfig, ddpg_config, evaluate, td3_config, train

__all__ = ["Agent", "AgentConfig", "ddpg_config", "evaluate", "td3_config", "train"]
