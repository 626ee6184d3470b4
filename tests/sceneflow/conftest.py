"""Shared fixtures for the scene-flow tests: where the real (non-commercial) sample data lives."""

from pathlib import Path

import pytest

from priorlab.sceneflow.io import sample_data_dir


@pytest.fixture
def sceneflow_data():
    """The shared scene-flow sample folder; skips the test when it is absent."""
    d = sample_data_dir()
    if not d.is_dir():
        pytest.skip(f"real scene-flow samples not found at {d} (set PRIORLAB_SHARED to the shared folder)")
    return d


@pytest.fixture
def sample(sceneflow_data):
    """``sample("folder/file")`` -> path of a shared sample file; skips when it is missing."""

    def get(rel: str) -> Path:
        p = sceneflow_data / rel
        if not p.exists():
            pytest.skip(f"sample file {p} not present in the shared data folder")
        return p

    return get
