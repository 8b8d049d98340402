"""mlkit.serve when a peer dies: three real peers on loopback, steady HTTP load through one peer's proxy, and
`kill -9` of another peer that hosts a replica and the *driving* agent (the one on the smallest peer id).
Requests that were running on the dead replica are retried elsewhere by the router; the next agent takes over
driving with no election and refills the slot on a live peer."""

from __future__ import annotations

import json
import shutil
import tempfile

import pytest

pytest.importorskip("uvicorn")

from cluster_util import Cluster, wait_for  # noqa: E402
from itest_util import run_driver  # noqa: E402

pytestmark = [pytest.mark.mlkit, pytest.mark.integration, pytest.mark.slow]

DRIVER = """
import asyncio, json, os, signal, sys, threading, time
import p2pcompute as p2p
from p2pcompute.mlkit import serve
from p2pcompute.mlkit.serve import loadgen, state

address, token_file, pids, victim = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
p2p.init(address=address, token=open(token_file).read().strip())
here = p2p.get_runtime_context().get_node_id()

@serve.deployment(num_replicas=3, max_ongoing_requests=16)
class Noop:
    async def __call__(self, request):
        await asyncio.sleep(0.002)
        return "ok"

serve.start(http_options={"port": 0})
serve.run(Noop.bind(), name="noop", route_prefix="/noop")
url = serve.proxy_urls()[here] + "/noop"
nodes = {s.value["node"] for s in state.list_slots("noop")}
assert victim in nodes and victim != here, (victim, nodes, here)
box = {}
t = threading.Thread(target=lambda: box.setdefault("r", asyncio.run(
    loadgen.run_load(url, duration_s=8, concurrency=6, rate_per_s=150))))
t.start()
time.sleep(3)  # steady load before the fault (the driver is the experiment, not a test wait)
kill_at = time.monotonic()
os.kill(pids[victim], signal.SIGKILL)
t.join(120)
res = box["r"]
kill_s = kill_at - (time.monotonic() - res.elapsed_s)
after = sorted(f for f, s in zip(res.finished_at_s, res.statuses) if s == 200 and f > kill_s)
gaps = [b - a for a, b in zip([kill_s] + after, after)]
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    slots = state.list_slots("noop", linearizable=True)
    if sum(1 for s in slots if s.state == "READY" and s.value["node"] != victim) == 3:
        break
    time.sleep(0.1)
refilled_s = time.monotonic() - kill_at
print("RESULT " + json.dumps({"total": len(res.statuses), "failed": res.failed,
      "statuses": sorted(set(res.statuses)), "max_gap_s": max(gaps) if gaps else None,
      "refilled_s": refilled_s, "summary": res.summary(),
      "agents": sorted(state.list_agents(linearizable=True))}))
"""


@pytest.mark.timeout(170)
def test_replica_peer_killed_under_load(tmp_path):
    base = tempfile.mkdtemp(prefix="p2ps-")   # short: peer homes hold Unix sockets
    cluster = Cluster(base)
    try:
        peers = [cluster.start(num_cpus=1) for _ in range(3)]
        wait_for(lambda: all(sum(1 for s in p.states().values() if s == "alive") == 3 for p in peers), 30,
                 "three peers alive everywhere")
        pids = json.dumps({p.peer_id: p.pid for p in peers})
        # The victim is the peer with the smallest id: it hosts a replica and the agent that drives. The
        # driver and the load go through another peer, which survives.
        victim = min(peers, key=lambda p: p.peer_id)
        via = next(p for p in peers if p is not victim)
        proc = run_driver(DRIVER.replace(
            "sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]",
            f"{via.address!r}, {cluster.token_file!r}, json.loads({pids!r}), {victim.peer_id!r}"),
            tmp_path, timeout_s=150)
        line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
        result = json.loads(line[len("RESULT "):])
        print(result)
        assert result["total"] > 300
        assert result["failed"] <= 0.01 * result["total"], result
        assert result["refilled_s"] < 60                     # refilled by the agent that took over driving
        assert result["agents"] == sorted(p.peer_id for p in peers if p is not victim)   # it forgot the dead one
    finally:
        cluster.stop_all()
        shutil.rmtree(base, ignore_errors=True)
