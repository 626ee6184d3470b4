"""Hypothesis profiles for the fuzz suite.

``ci`` (default): fixed seed (``derandomize=True``), few examples, no deadline, so CI is
deterministic and its share stays small. ``long``: many random examples, run by hand::

    HYPOTHESIS_PROFILE=long .venv/bin/pytest -p no:xdist tests/fuzz
"""

import os

from hypothesis import HealthCheck, settings

_QUIET_CHECKS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile("ci", max_examples=12, derandomize=True, deadline=None, database=None,
                          suppress_health_check=_QUIET_CHECKS, print_blob=True)
settings.register_profile("long", max_examples=400, deadline=None,
                          suppress_health_check=_QUIET_CHECKS, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
