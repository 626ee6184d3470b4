"""Optimisers and wrapper optimisers."""
