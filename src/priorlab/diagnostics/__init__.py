"""Measurements of training dynamics and representations."""
