"""Shared fixtures. Plain helpers live in the ``tests/support`` package
(``from support.images import make_image``; see its ``__init__``).

Keep this file to thin fixtures, grouped by the area that uses them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from support.manifests import write_manifest
from support.paths import DATA, REPO_ROOT

# Subprocesses (``python -m runner ...``) import this checkout even when runner is not
# installed, and never a different installed copy.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(REPO_ROOT), *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(REPO_ROOT)]]
)

# -- the per-user cache folder ------------------------------------------------------------------
# runner keeps its sealed caches in a per-user folder (runner/cache.py): by default
# ~/.cache/runner, shared by every runner on the machine and pruned to its 256 most recently
# used manifest folders. The suite must not fill or prune the developer's, nor share one
# between pytest-xdist workers (one worker's tests would evict another's folders while in
# use), so each pytest process (the serial run, or each xdist worker) points
# RUNNER_CACHE_DIR at a private folder of its own (0700, outside any repository), inherited
# by the runner subprocesses its tests start. Tests of the cache itself set their own.


def pytest_configure(config: pytest.Config) -> None:
    import tempfile

    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    folder = tempfile.mkdtemp(prefix=f"runner-test-cache-{worker}-")
    config.add_cleanup(lambda: shutil.rmtree(folder, ignore_errors=True))
    os.environ["RUNNER_CACHE_DIR"] = folder


# -- options -------------------------------------------------------------------------------
# Here, not in tests/reliability/conftest.py: pytest reads options only from conftests it
# loads at start-up, and ``pytest --long`` must work from the repository's root.


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--long",
        action="store_true",
        default=False,
        help="reliability suite: full counts (10,000 manifests, 1,000 lockfiles, 100 kills...)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``long`` run only with ``--long``."""
    if config.getoption("--long"):
        return
    skip = pytest.mark.skip(reason="full-count run: pass --long")
    for item in items:
        if "long" in item.keywords:
            item.add_marker(skip)


# -- manifests -------------------------------------------------------------------------------


@pytest.fixture
def repo_root() -> Path:
    """The checkout's root folder (examples/, schemas/)."""
    return REPO_ROOT


@pytest.fixture
def data_dir() -> Path:
    """``tests/data``: bad-input manifests shared by tests."""
    return DATA


@pytest.fixture
def manifest_path(tmp_path: Path) -> Path:
    """A valid one-job manifest with two real PNG images, in ``tmp_path``."""
    return write_manifest(tmp_path)
