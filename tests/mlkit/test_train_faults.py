"""A training group survives the death of a whole peer: three real peers (`p2p start`/`join`), two workers
of one CPU each (so on two different peers), and `kill -9` of a peer holding a worker in the middle of the
run. The group restarts on the surviving peers from its last checkpoint and finishes with the right steps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
from cluster_util import Cluster, wait_for

pytestmark = [pytest.mark.mlkit, pytest.mark.integration, pytest.mark.slow]

DRIVER = """
import json, os, sys, threading
import numpy as np
import p2pcompute as p2p
from p2pcompute.mlkit import train

def loop(config):
    ckpt = train.get_checkpoint()
    start = ckpt.to_dict()["step"] if ckpt else 0
    ctx = train.get_context()
    rank = ctx.get_world_rank()
    for step in range(start + 1, 7):
        got = train.allreduce(np.full(40_000, float(rank + step)))  # 320 kB: the ring path
        assert np.array_equal(got, np.full(40_000, float(2 * step + 1))), "allreduce not exact"
        train.report({"step": step, "start": start},
                     checkpoint=train.Checkpoint.from_dict({"step": step}) if rank == 0 else None)
        if step == 3 and ctx.attempt == 0:
            nodes = train.allgather_object(p2p.get_runtime_context().get_node_id())
            if rank == 0:
                with open(config["marker"] + ".tmp", "w") as f:
                    json.dump(nodes, f)
                os.replace(config["marker"] + ".tmp", config["marker"])
            threading.Event().wait(120)

address, token, storage, marker = sys.argv[1:5]
p2p.init(address=address, token=token)
result = train.DataParallelTrainer(
    loop, train_loop_config={"marker": marker},
    scaling_config=train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
    run_config=train.RunConfig(storage_path=storage, name="peerloss", verbose=0,
                               failure_config=train.FailureConfig(max_failures=2))).fit()
print("RESULT " + json.dumps({"failures": result.num_failures, "metrics": result.metrics,
                              "history": result.metrics_history}), flush=True)
"""


@pytest.mark.timeout(180)
def test_losing_a_peer_mid_run_restarts_the_group_on_the_survivors(tmp_path):
    cluster = Cluster(str(tmp_path / "peers"))
    driver = None
    try:
        peers = [cluster.start(num_cpus=1) for _ in range(3)]
        wait_for(lambda: all(s == "alive" for s in peers[0].states().values()) and len(peers[0].states()) == 3,
                 30, "three live peers")
        script = tmp_path / "driver.py"
        script.write_text(textwrap.dedent(DRIVER))
        marker = str(tmp_path / "nodes.json")
        token = open(cluster.token_file).read().strip()
        env = {k: v for k, v in os.environ.items() if k not in ("P2P_ADDRESS", "P2P_TOKEN")}
        driver = subprocess.Popen([sys.executable, str(script), peers[0].address, token, str(tmp_path / "runs"),
                                   marker], cwd=str(tmp_path), env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        wait_for(lambda: os.path.exists(marker) or driver.poll() is not None, 90, "the group at step 3")
        assert driver.poll() is None, driver.communicate()[0]
        worker_nodes = json.load(open(marker))
        assert len(set(worker_nodes)) == 2  # one CPU each: two different peers
        # Kill a peer holding a worker, but not the driver's own (it holds the run's controller).
        victim = next(p for p in peers[1:] if p.peer_id in worker_nodes)
        os.kill(victim.pid, signal.SIGKILL)
        out, _ = driver.communicate(timeout=120)
        assert driver.returncode == 0, out
        result = json.loads(next(x for x in out.splitlines() if x.startswith("RESULT "))[len("RESULT "):])
        assert result["failures"] == 1
        assert result["metrics"]["step"] == 6 and result["metrics"]["training_iteration"] == 6
        after = [(h["step"], h["start"]) for h in result["history"] if h["attempt"] == 1]
        assert after == [(4, 3), (5, 3), (6, 3)]
    finally:
        if driver is not None and driver.poll() is None:
            driver.kill()
            driver.wait(10)
        cluster.stop_all()
