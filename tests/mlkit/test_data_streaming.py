"""A dataset three times larger than a small object store streams through without filling it.

The driver runs in a subprocess with its own embedded peer and a 32 MiB store: 96 blocks of 1 MiB (96 MiB)
are made by read+map tasks, pass through a second stage, and are consumed by a deliberately slow consumer
(so producers would race ahead without backpressure). A thread samples the peer's store use meanwhile. The
result must be exact and at most a small part of the data may have been spilled. (Measured: 0 MiB spilled
with the executor's bounds; 84 MiB of the 96 spilled with the bounds lifted. The bound here is loose
because of a core race, reported: a stored task result whose last ref is dropped within ~0.3 s of the
task finishing can stay in the store, so a few blocks linger and the store fills a little over time.)
"""

from __future__ import annotations

import json

import pytest

from itest_util import run_driver

pytestmark = [pytest.mark.mlkit, pytest.mark.integration, pytest.mark.slow]

DRIVER = """
import json, threading, time
import numpy as np
import p2pcompute as p2p
from p2pcompute.mlkit import data

STORE = 32 * 2**20
p2p.init(num_cpus=2, object_store_memory=STORE)
ROWS_PER_BLOCK = 2**20 // 8              # 1 MiB of float64 per block
BLOCKS = 96                               # 96 MiB in all: 3x the store

def make(batch):
    out = np.repeat(batch["id"].astype(np.float64), ROWS_PER_BLOCK // len(batch["id"]))
    return {"v": out}

def scale(batch):
    return {"v": batch["v"] * 2.0}

peak = {"used": 0, "spilled": 0}
stop = threading.Event()
def watch():
    while not stop.is_set():
        for n in p2p.nodes():
            peak["used"] = max(peak["used"], n["StoreUsed"])
            peak["spilled"] = max(peak["spilled"], n["Spilled"])
        time.sleep(0.02)  # sampling, not waiting for a condition
t = threading.Thread(target=watch, daemon=True)
t.start()

ds = (data.range(BLOCKS * 4, override_num_blocks=BLOCKS)
      .map_batches(make, batch_size=None)
      .map_batches(scale, batch_size=None, num_cpus=1))   # other options: a second stage
total, rows = 0.0, 0
for batch in ds.iter_batches(batch_size=ROWS_PER_BLOCK, prefetch_batches=1):
    total += float(batch["v"].sum())
    rows += len(batch["v"])
    time.sleep(0.02)  # a slow consumer: producers must wait for it
stop.set()
t.join()
expected = 2.0 * sum(float(i) for i in range(BLOCKS * 4)) * (ROWS_PER_BLOCK // 4)
print(json.dumps({"total": total, "expected": expected, "rows": rows, "peak": peak["used"],
                  "spilled": peak["spilled"], "capacity": STORE, "stats": ds.stats()}))
"""


@pytest.mark.timeout(120)
def test_three_times_the_store_streams_through(tmp_path):
    proc = run_driver(DRIVER, tmp_path, timeout_s=110)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["total"] == out["expected"]
    assert out["rows"] == 96 * 2**20 // 8
    assert out["spilled"] <= 0.2 * 96 * 2**20, out  # not "spill everything": at most a fifth
