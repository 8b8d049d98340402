"""A driver attached by address, on two machines: its tasks placed on the other machine's peer come back.

Two peers in network namespaces of their own (distinct machine ids, TCP with CURVE between them, and
`P2P_FORCE_TRANSFERS=1` so no shared `/dev/shm` is mapped as a shortcut). A driver in the first namespace
calls `init(address="10.77.0.1:7700", token=...)` and runs tasks pinned to the second peer: their workers
must send the replies to an address of the driver that they can reach — not a loopback address, which on
their machine is themselves. A 100 MB argument crosses the network the same way.

Skipped, with the reason, where network namespaces cannot be made.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import textwrap

import pytest

from netns_util import PEER_PORT, Fabric, NsPeer, probe

pytestmark = [pytest.mark.integration, pytest.mark.netns, pytest.mark.timeout(150)]

DRIVER = """
import sys, time
import numpy as np
import p2pcompute as p2p
from p2pcompute.util.scheduling_strategies import NodeAffinitySchedulingStrategy

host, token, other = sys.argv[1], sys.argv[2], sys.argv[3]
info = p2p.init(address=host, token=token)

@p2p.remote
def where(x):
    return p2p.get_runtime_context().get_node_id(), x * 2

@p2p.remote
def checksum(a):
    return int(a.nbytes), float(a[::4096].sum())

on_other = NodeAffinitySchedulingStrategy(other, soft=False)
out = p2p.get([where.options(scheduling_strategy=on_other).remote(i) for i in range(20)], timeout=60)
assert all(node == other for node, _ in out), out
assert [v for _, v in out] == [i * 2 for i in range(20)]
big = np.arange(100 * 1024 * 1024 // 8, dtype=np.float64)
t = time.monotonic()
nbytes, sample = p2p.get(checksum.options(scheduling_strategy=on_other).remote(big), timeout=90)
assert nbytes == big.nbytes and sample == float(big[::4096].sum()), (nbytes, sample)
print("OK 100MB arg in %.2f s" % (time.monotonic() - t))
p2p.shutdown()
"""


@pytest.fixture
def two_machines(tmp_path):
    reason = probe()
    if reason is not None:
        pytest.skip(f"cannot run peers in Linux network namespaces here: {reason}")
    fabric = Fabric(f"p2pa{os.getpid()}", "AA")
    peers: list[NsPeer] = []
    try:
        fabric.build()
        token_file = str(tmp_path / "p0" / "token")
        for i in range(2):
            peer = NsPeer(fabric, i, str(tmp_path / f"p{i}"))
            peers.append(peer)
            peer.launch(seed=peers[0] if i else None, token_file=token_file if i else None)
        yield fabric, peers, token_file
    finally:
        for peer in peers:
            peer.stop()
        fabric.destroy()
        for peer in peers:
            if peer.peer_id:
                shutil.rmtree(f"/dev/shm/p2p-{peer.peer_id}", ignore_errors=True)


def test_driver_attached_by_address_gets_replies_from_another_machine(two_machines, tmp_path):
    fabric, peers, token_file = two_machines
    from cluster_util import wait_for
    # The second peer must be alive in the first one's view before tasks can be pinned to it.
    wait_for(lambda: any(n["NodeID"] == peers[1].peer_id and n["State"] == "alive"
                         for n in json.loads(peers[0].p2p("status", "--home", peers[0].home, "--json").stdout)["nodes"]),
             60, "the second peer to be alive in the first one's view")
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(DRIVER))
    token = open(token_file).read().strip()
    env_prefix = ["env", "P2P_FORCE_TRANSFERS=1", "PYTHONUNBUFFERED=1"]
    proc = fabric.run(0, [*env_prefix, sys.executable, str(script), f"{peers[0].host}:{PEER_PORT}", token,
                          peers[1].peer_id], timeout_s=120)
    assert proc.returncode == 0, f"driver failed:\n{proc.stdout}\n{proc.stderr}"
    assert "OK 100MB arg" in proc.stdout
    print(proc.stdout.strip())


def test_loopback_node_ip_for_a_remote_peer_is_refused():
    from p2pcompute.errors import InvalidArgumentError
    from p2pcompute.runtime.attach import advertised_host
    with pytest.raises(InvalidArgumentError, match="loopback"):
        advertised_host("10.77.0.1", 7700, "127.0.0.1")
    assert advertised_host("10.77.0.1", 7700, "10.77.0.9") == "10.77.0.9"
    # With no override, the route's own source address: on this machine, to loopback, a loopback address.
    assert advertised_host("127.0.0.1", 7700, None).startswith("127.")


def test_the_answering_peer_is_found_among_a_dead_predecessor_at_the_same_address():
    from p2pcompute.runtime.attach import _self_of
    nodes = [{"NodeID": "aaa-old", "Alive": False, "State": "dead", "Address": "tcp://127.0.0.1:7700"},
             {"NodeID": "bbb", "Alive": True, "State": "alive", "Address": "tcp://127.0.0.1:7701"},
             {"NodeID": "ccc-new", "Alive": True, "State": "alive", "Address": "tcp://127.0.0.1:7700"}]
    assert _self_of(nodes, "tcp://127.0.0.1:7700") == "ccc-new"
    assert _self_of(nodes + [{"NodeID": "zzz", "Self": True, "Address": "x"}], "tcp://127.0.0.1:7700") == "zzz"
