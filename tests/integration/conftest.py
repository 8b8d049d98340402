"""Shared fixtures and helpers for the real-process integration tests.

One cluster (`p2p.init(num_cpus=2)`) is shared by every test that asks for the `cluster` fixture: starting
one is cheap, but each worker takes ~0.3 s to boot, so reusing warm workers keeps the suite fast.

Tests that need a cluster of their own either run a whole driver in a subprocess (`run_driver`) — the
usual way, since it also isolates crashes and lets us read the driver's stdout/stderr — or use the
`fresh_cluster` fixture, which owns `p2p.init`/`shutdown` in this process. Those tests are moved to the
front of the run (see `pytest_collection_modifyitems`) so the shared cluster starts once; if one still
runs later, it stops the shared cluster and `cluster` starts it again on next use.

Every wait is a deadline on a condition (`wait_until`), never a fixed sleep.
"""

from __future__ import annotations

import pytest

import p2pcompute as p2p
from itest_util import settle_shared_cluster

NUM_CPUS = 2


# ---- fixtures -------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def _shared_cluster_session():
    """Owns the shared cluster's lifetime: stopped once, at the end of the session."""
    yield
    if p2p.is_initialized():
        p2p.shutdown()


@pytest.fixture
def cluster(_shared_cluster_session, request):
    """The shared `init(num_cpus=2)` cluster, started on first use; given back with every CPU free."""
    if not p2p.is_initialized():
        p2p.init(num_cpus=NUM_CPUS)
    yield
    settle_shared_cluster(request.node.nodeid)


@pytest.fixture
def fresh_cluster():
    """A clean slate for tests that call init()/shutdown() themselves in this process."""
    if p2p.is_initialized():
        p2p.shutdown()
    yield
    if p2p.is_initialized():
        p2p.shutdown()


def pytest_collection_modifyitems(config, items):
    # Tests that start and stop their own in-process cluster go first, so the shared one starts only once.
    items.sort(key=lambda item: 0 if "fresh_cluster" in getattr(item, "fixturenames", ()) else 1)
