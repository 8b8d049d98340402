"""A peer SIGKILLed during `map_batches` on a three-peer cluster: the dataset still gives the exact result.

Three peers (`p2p start` + two `p2p join`, one CPU each) and a driver subprocess attached to the first. The
dataset has two map stages, so blocks made on one peer are read by tasks on another. After the driver has
consumed a few batches it stops pulling (the pipeline fills its buffers with blocks on every peer) and
reports which peers made the blocks it saw; the test SIGKILLs the process group of another peer that did
work - peer, zygote and workers, one machine - and deletes its store directory, as a dead machine's memory
would be gone. Then the driver resumes. Tasks that ran there are retried elsewhere and lost blocks are
rebuilt from lineage by the core; every row must arrive exactly once with its exact value.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import queue
import time

import pytest

from cluster_util import Cluster, wait_for

pytestmark = [pytest.mark.mlkit, pytest.mark.integration, pytest.mark.slow]

BLOCKS = 24
ROWS = 32_768  # 256 KiB of float64 per block: stored objects, not inline values

DRIVER = f"""
import json, logging, sys, time
import numpy as np
import p2pcompute as p2p
from p2pcompute.mlkit import data

def emit(**kw):
    print(json.dumps(kw), flush=True)

logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # kept as driver.log
p2p.init(address=sys.argv[1], token=open(sys.argv[2]).read().strip())

def make(batch):
    i = int(batch["id"][0])
    time.sleep(0.05)
    return {{"row": i * {ROWS} + np.arange({ROWS}), "v": np.full({ROWS}, float(i)),
             "node1": np.full({ROWS}, p2p.get_runtime_context().get_node_id())}}

def double(batch):
    return {{"row": batch["row"], "v": batch["v"] * 2.0, "node1": batch["node1"],
             "node2": np.full(len(batch["row"]), p2p.get_runtime_context().get_node_id())}}

ds = (data.range({BLOCKS}, override_num_blocks={BLOCKS})
      .map_batches(make, batch_size=None)
      .map_batches(double, batch_size=None, num_cpus=1))
rows, total, seen, n = [], 0.0, set(), 0
for batch in ds.iter_batches(batch_size={ROWS}, prefetch_batches=1):
    rows.append(np.asarray(batch["row"]).copy())
    total += float(batch["v"].sum())
    seen |= set(batch["node1"].tolist()) | set(batch["node2"].tolist())
    n += 1
    if n == 6:
        emit(event="paused", nodes=sorted(seen))
        assert sys.stdin.readline().strip() == "go"
allrows = np.sort(np.concatenate(rows))
emit(event="done", total=total, exact=bool(np.array_equal(allrows, np.arange({BLOCKS} * {ROWS}))),
     count=int(len(allrows)), nodes=sorted(seen))
"""


def _read_events(proc, events: queue.Queue) -> None:
    for line in proc.stdout:
        try:
            events.put(json.loads(line))
        except ValueError:
            pass
    events.put({"event": "exit"})


def _next(events: queue.Queue, kind: str, timeout_s: float, log_path) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            ev = events.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            pytest.fail(f"no {kind!r} event from the driver within {timeout_s} s; driver log (tail):\n"
                        f"{log_path.read_text()[-4000:]}")
        if ev.get("event") == kind:
            return ev
        if ev.get("event") == "exit":
            pytest.fail(f"driver exited before {kind!r}; driver log (tail):\n{log_path.read_text()[-4000:]}")


@pytest.mark.timeout(180)
def test_peer_killed_during_map_batches(tmp_path):
    base = tempfile.mkdtemp(prefix="p2pd-", dir="/tmp")  # Unix socket paths must stay short
    cluster = Cluster(base)
    proc = None
    try:
        peers = [cluster.start(num_cpus=1) for _ in range(3)]
        ids = {p.peer_id for p in peers}
        for p in peers:
            wait_for(lambda: {i for i, s in p.states().items() if s == "alive"} == ids, 30,
                     f"{p.peer_id} to see all three alive")
        script = tmp_path / "driver.py"
        script.write_text(textwrap.dedent(DRIVER))
        env = {k: v for k, v in os.environ.items() if k not in ("P2P_ADDRESS", "P2P_TOKEN")}
        log_path = tmp_path / "driver.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen([sys.executable, str(script), peers[0].address, cluster.token_file],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                    text=True, cwd=str(tmp_path), env=env)
        events: queue.Queue = queue.Queue()
        threading.Thread(target=_read_events, args=(proc, events), daemon=True).start()
        paused = _next(events, "paused", 90, log_path)
        others = [p for p in peers[1:] if p.peer_id in paused["nodes"]] or peers[1:]
        victim = others[0]
        store = victim.state["store_dir"]
        os.killpg(os.getpgid(victim.pid), signal.SIGKILL)
        shutil.rmtree(store, ignore_errors=True)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        done = _next(events, "done", 120, log_path)
        assert done["exact"] and done["count"] == BLOCKS * ROWS
        assert done["total"] == 2.0 * ROWS * sum(range(BLOCKS))
        assert proc.wait(timeout=30) == 0
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        cluster.stop_all()
        shutil.rmtree(base, ignore_errors=True)
