"""Modules, activations and parametrisations."""
