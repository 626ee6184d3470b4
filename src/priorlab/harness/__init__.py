"""Reproduction harness: claims, runner with cache, verdict rule, report."""
