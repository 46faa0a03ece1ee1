"""Reliability suite: the ``--long`` switch between CI counts and full counts.

``--long`` itself and the skipping of tests marked ``long`` live in ``tests/conftest.py``
(pytest reads options only from conftests loaded at start-up). A test with a small CI count
and a large full count is not marked: it takes the ``long_run`` fixture and runs
either way.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def long_run(pytestconfig: pytest.Config) -> bool:
    """True under ``--long``: use the full counts."""
    return bool(pytestconfig.getoption("--long"))

