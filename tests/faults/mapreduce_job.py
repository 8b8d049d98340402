"""The map-reduce job the fault tests run, and its exact result computed without any cluster.

Map task `i` returns a 1 MiB int64 array that depends only on `i`. With R reduces, reduce task `g` gets the
arrays of maps g, g+R, g+2R, ... (`group` of them) as top-level arguments (so they are resolved, and read from
the store of whichever peer holds them) and returns a small weighted sum; the driver combines the reduces,
weighted again. As in a real shuffle, every reduce depends on maps from the whole map phase, so while maps run
most reduces have some arguments ready and wait for the others. Both weightings depend on position, so a map
output that is lost and rebuilt wrongly, delivered to the wrong reduce, or counted twice changes the result.

Imported by the driver script (whose workers import it by name too: they share the driver's `sys.path`) and by
the test, which computes the expected value with numpy alone.
"""

from __future__ import annotations

import os
import time

import numpy as np

ARRAY_LEN = 131_072  # int64 elements: 1 MiB per map output, far above the 100 KiB inline limit
MODULUS = 1_000_003


def map_array(i: int) -> np.ndarray:
    return (np.arange(ARRAY_LEN, dtype=np.int64) * (i + 1) + i * i) % MODULUS


def reduce_value(arrays) -> int:
    return sum((j + 1) * int(a.sum()) for j, a in enumerate(arrays))


def combine(reduce_values: list[int]) -> int:
    return sum((g + 1) * v for g, v in enumerate(reduce_values))


def groups(first_map: int, n_maps: int, group: int) -> list[list[int]]:
    """The maps each reduce reads: reduce g of R gets maps first+g, first+g+R, ... (`group` of them)."""
    assert n_maps % group == 0, "every reduce reads exactly `group` maps"
    reduces = n_maps // group
    return [[first_map + g + k * reduces for k in range(group)] for g in range(reduces)]


def split(total_tasks: int, group: int) -> tuple[int, int]:
    """(maps, reduces) for a graph of about `total_tasks` tasks with `group` maps per reduce."""
    reduces = max(1, total_tasks // (group + 1))
    return reduces * group, reduces


def expected_result(first_map: int, n_maps: int, group: int) -> int:
    """The job's result computed here, with numpy, without the cluster."""
    return combine([reduce_value([map_array(i) for i in maps]) for maps in groups(first_map, n_maps, group)])


# ---- the tasks' bodies (wrapped with p2pcompute.remote by the driver) -----------------------------------------

def map_task(i: int, exec_log: str | None, work_ms: int) -> np.ndarray:
    if work_ms:
        time.sleep(work_ms / 1000)  # simulated work, so that a fault lands while maps are still running
    arr = map_array(i)
    if exec_log:
        import p2pcompute
        node = p2pcompute.get_runtime_context().node_id
        # One short O_APPEND write per execution: whole lines even with every peer's workers appending.
        fd = os.open(exec_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, f"{i} {node} {time.time():.3f}\n".encode())
        finally:
            os.close(fd)
    return arr


def reduce_task(*arrays) -> int:
    return reduce_value(arrays)


def read_exec_log(path: str) -> list[tuple[int, str, float]]:
    """(map index, peer id, unix time when it finished computing) per map execution, in file order."""
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            i, node, t = line.split()
            out.append((int(i), node, float(t)))
    return out
