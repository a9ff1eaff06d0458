"""Calibration-job fixtures; the session's Ray cluster (`ray_cluster`) lives in tests/conftest.py."""

import pytest  # noqa: E402

from oscar_cluster.corpora import shakespeare_files  # noqa: E402

@pytest.fixture(scope="session")
def calib_files():
    """Two Shakespeare plays: far more than the 1024 tokens the tests calibrate on."""
    return tuple(str(p) for p in shakespeare_files()[:2])
