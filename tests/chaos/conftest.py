"""The chaos suite: the ``chaos`` marker (``make chaos`` selects it) and a clean slate of
network namespaces before the first scenario (those a killed earlier run left behind)."""

from __future__ import annotations

import contextlib
import os
import time

import pytest

from support import chaos_net
from support.chaos_run import results_dir


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "chaos: fault-injection scenarios, fuzzing and abuse of a real cluster"
    )


@pytest.fixture(scope="session", autouse=True)
def _fresh_start() -> None:
    """Results of an earlier run are removed (the report shows one run), and so are the
    namespaces and bridges of runs that died before their finalizers.

    Under pytest-xdist every worker runs this fixture: a file may already be gone (another
    worker removed it), and a file newer than this worker's start is this run's result (a
    scenario takes 20 s or more, so it cannot finish before a worker starts), kept."""
    started = time.time() - 1.0
    for old in results_dir().glob("*.json"):
        with contextlib.suppress(FileNotFoundError):
            if old.stat().st_mtime < started:
                old.unlink()
    if os.geteuid() == 0:
        removed = chaos_net.clean_stale()
        if removed:
            print(f"removed stale chaos namespaces/bridges: {removed}")


@pytest.fixture(scope="session")
def netns_unavailable() -> str | None:
    """None when network namespaces work here, else why not (the skip message)."""
    return chaos_net.probe()
