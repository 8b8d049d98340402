"""Resources: what the cluster reports, custom resources, and tasks that ask for more than exists."""

from __future__ import annotations

import os
import time

import pytest

import p2pcompute as p2p

from itest_util import run_driver, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@p2p.remote
def gated(gate: str, started: str):
    open(started, "w").close()
    deadline = time.monotonic() + 30
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)
    return True


def test_cluster_and_available_resources(cluster, tmp_path):
    total = p2p.cluster_resources()
    assert total["CPU"] == 2
    assert total["memory"] > 0
    # Once idle (leases are returned shortly after use), everything is available again.
    wait_until(lambda: p2p.available_resources().get("CPU") == 2, 10, what="all CPUs to be available")
    assert p2p.available_resources()["memory"] == total["memory"]

    gate, started = tmp_path / "gate", [tmp_path / "s0", tmp_path / "s1"]
    refs = [gated.remote(str(gate), str(s)) for s in started]
    try:
        wait_until(lambda: all(s.exists() for s in started), 20, what="both CPUs to be busy")
        assert p2p.available_resources().get("CPU", 0) == 0
        assert p2p.cluster_resources()["CPU"] == 2  # the total does not change
    finally:
        gate.touch()
    assert p2p.get(refs, timeout=30) == [True, True]
    wait_until(lambda: p2p.available_resources().get("CPU") == 2, 10, what="the CPUs to come back")


def test_nodes_lists_one_alive_node(cluster):
    nodes = p2p.nodes()
    assert len(nodes) == 1
    node = nodes[0]
    assert node["Alive"] is True
    assert node["NodeID"] == p2p.get_runtime_context().get_node_id()
    assert node["Resources"]["CPU"] == 2
    assert node["Resources"]["memory"] > 0


def test_custom_resources(tmp_path):
    proc = run_driver("""
        import p2pcompute as p2p
        p2p.init(num_cpus=1, resources={"tpu": 2})
        total = p2p.cluster_resources()
        assert total["tpu"] == 2 and total["CPU"] == 1, total
        assert p2p.nodes()[0]["Resources"]["tpu"] == 2

        @p2p.remote(resources={"tpu": 1})
        def on_tpu():
            return p2p.available_resources().get("tpu", 0)

        # While it runs, the task holds one of the two tpus.
        assert p2p.get(on_tpu.remote(), timeout=30) == 1
        print("OK")
        p2p.shutdown()
    """, tmp_path)
    assert "OK" in proc.stdout


def test_infeasible_task_warns_once_and_get_times_out(tmp_path):
    proc = run_driver("""
        import sys, time
        import p2pcompute as p2p
        from p2pcompute import errors
        p2p.init(num_cpus=2)

        @p2p.remote
        def huge():
            return "ran"

        refs = [huge.options(num_cpus=64).remote() for _ in range(3)]
        start = time.monotonic()
        try:
            p2p.get(refs[0], timeout=1)
        except errors.GetTimeoutError:
            print(f"TIMEOUT {time.monotonic() - start:.2f}")
        ready, _ = p2p.wait(refs, num_returns=1, timeout=0.2)
        assert ready == [], ready
        print("OK")
        sys.stdout.flush()
        p2p.shutdown()
    """, tmp_path)
    assert "OK" in proc.stdout
    assert "TIMEOUT" in proc.stdout, proc.stdout
    elapsed_s = float(proc.stdout.split("TIMEOUT ")[1].split()[0])
    assert 1.0 <= elapsed_s < 3.0
    warnings = [line for line in proc.stderr.splitlines() if "64" in line]
    assert len(warnings) == 1, proc.stderr
    assert "CPU" in warnings[0] and "no peer has" in warnings[0]
