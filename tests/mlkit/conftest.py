"""Fixtures for the mlkit tests.

mlkit libraries run on the public API, so their tests use a real embedded peer (`ml_cluster`, shared by the
whole session and started on first use) or, for failures, real local peers started with the `p2p` command
(`cluster_util.Cluster`) and real signals. Helpers from the integration tests are importable here.
"""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "integration"))

import p2pcompute as p2p  # noqa: E402
from itest_util import settle_shared_cluster  # noqa: E402

NUM_CPUS = 2


@pytest.fixture(scope="session")
def _ml_cluster_session():
    yield
    if p2p.is_initialized():
        p2p.shutdown()


@pytest.fixture
def ml_cluster(_ml_cluster_session, request):
    """An embedded peer with two CPUs, started on first use and shared by the mlkit tests; given back with
    every CPU free (see `settle_shared_cluster`)."""
    if not p2p.is_initialized():
        p2p.init(num_cpus=NUM_CPUS)
    yield
    settle_shared_cluster(request.node.nodeid)
