"""Fixtures shared by the integration tests of one part (the session-wide servers are in tests/conftest.py)."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from shelfcast.settings import Settings
from tests.integration.test_features_job import FeaturesJob


@pytest.fixture
def job(settings: Settings, tmp_path: Path) -> Iterator[FeaturesJob]:
    """A features job on the session's servers with a state dir of its own (not started), stopped after the test."""
    features = FeaturesJob(settings, tmp_path / "state")
    yield features
    features.stop()
