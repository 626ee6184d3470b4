"""Modules, activations and parametrisations."""

from priorlab.nn.stablemax import StableMax, log_stablemax, stablemax, stablemax_cross_entropy

__all__ = ["StableMax", "log_stablemax", "stablemax", "stablemax_cross_entropy"]
