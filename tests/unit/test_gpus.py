"""The peer's GPU id assignment (runtime/gpus.py), stepped directly: no processes."""

from __future__ import annotations

import dataclasses
import os

from hypothesis import given, settings
from hypothesis import strategies as st

from p2pcompute.lease import messages as lm
from p2pcompute.lease import resources
from p2pcompute.runtime import gpus

U = resources.UNIT


def request(request_id: str, shape: dict, job_id: str = "job1"):
    known = {"request_id": request_id, "holder_id": "h-d1", "holder_addr": "ipc:///h", "job_id": job_id,
             "shape": shape, "spilled": 0, "strategy": "DEFAULT", "affinity": None, "soft": False, "actor": False}
    # Fields added to the message later (hints, say) get an empty value: only the ones above matter here.
    return lm.RequestLease(**{f.name: known.get(f.name, {}) for f in dataclasses.fields(lm.RequestLease)})


def test_gpu_requests_get_a_job_id_of_their_own():
    cpu = request("r1", {"CPU": U})
    assert gpus.tag_request(cpu) is cpu
    a, b = gpus.tag_request(request("r2", {"GPU": U})), gpus.tag_request(request("r3", {"GPU": U}))
    assert a.job_id != b.job_id and a.job_id.startswith("job1") and gpus.units_of(a.job_id) == U
    assert gpus.tag_request(a) is a  # spilled to another peer: tagged once
    assert gpus.units_of("job1") == 0


def test_whole_gpus_are_exclusive_and_freed_at_exit(tmp_path):
    g = gpus.GpuAssigner(2 * U, str(tmp_path))
    first = g.on_start_worker("w1", gpus.tag_request(request("r1", {"GPU": U})).job_id)
    second = g.on_start_worker("w2", gpus.tag_request(request("r2", {"GPU": U})).job_id)
    assert sorted(first + second) == ["0", "1"]
    assert g.on_start_worker("w3", "job1") == []  # a CPU worker gets none
    g.on_worker_exit("w1")
    assert g.on_start_worker("w4", gpus.tag_request(request("r4", {"GPU": U})).job_id) == first


def test_a_pool_worker_gets_its_ids_by_file_before_the_grant(tmp_path):
    g = gpus.GpuAssigner(2 * U, str(tmp_path), visible="6,7")
    g.on_granted("l1", "w9", {"GPU": 2 * U, "CPU": U})
    with open(gpus.gpu_file(str(tmp_path), "w9")) as f:
        assert f.read() == "6,7"  # the peer's own CUDA_VISIBLE_DEVICES are the ids it hands out
    assert g.on_lease_returned("l1") == "w9"
    assert g.on_lease_returned("l1") is None
    g.on_worker_exit("w9")
    assert not os.path.exists(gpus.gpu_file(str(tmp_path), "w9"))
    g.on_granted("l2", "w10", {"CPU": U})  # not a GPU lease: nothing to do
    assert g.on_lease_returned("l2") is None


def test_ids_are_free_when_the_lease_ends_not_when_its_worker_has_exited(tmp_path):
    """The core frees a lease's units when it ends; the ids follow. Two whole-GPU leases end, their workers
    still exiting; two halves that come next pack onto one GPU (they went to one each, when the exiting
    workers still counted)."""
    g = gpus.GpuAssigner(2 * U, str(tmp_path))
    g.on_granted("l1", "w1", {"GPU": U})
    g.on_granted("l2", "w2", {"GPU": U})
    assert g.on_lease_returned("l1") == "w1" and g.on_lease_returned("l2") == "w2"   # stopping, not yet gone
    g.on_granted("l3", "w3", {"GPU": U // 2})
    g.on_granted("l4", "w4", {"GPU": U // 2})
    assert g.by_worker["w3"][0][0] == g.by_worker["w4"][0][0]
    g.on_worker_exit("w1")  # the exit that follows frees nothing twice
    g.on_worker_exit("w2")
    assert sorted(g.used.values()) == [0, U]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from([U, 2 * U, 3 * U]), min_size=1, max_size=12), st.integers(0, 2 ** 16))
def test_whole_gpus_are_never_shared(requests, seed):
    """Whatever the order, as long as the core grants only what fits (total units), whole-GPU leases never
    share a GPU. (Fractions can fragment GPUs, since the core counts amounts, not GPUs: see docs/api.md.)"""
    import random
    rng = random.Random(seed)
    total = 4 * U
    g = gpus.GpuAssigner(total, "/nonexistent")
    live: dict[str, int] = {}
    for i, units in enumerate(requests):
        while sum(live.values()) + units > total:  # the core would wait: some lease ends first
            victim = rng.choice(sorted(live))
            del live[victim]
            g.on_worker_exit(victim)
        wid = f"w{i}"
        ids = g.on_start_worker(wid, gpus.tag_request(request(f"r{i}", {"GPU": units})).job_id)
        live[wid] = units
        assert len(set(ids)) == units // U
        assert all(used in (0, U) for used in g.used.values()), g.used


def test_fractions_pack_onto_one_gpu_before_using_another():
    g = gpus.GpuAssigner(2 * U, "/nonexistent")
    got = [g.on_start_worker(f"w{i}", gpus.tag_request(request(f"r{i}", {"GPU": U // 4})).job_id)
           for i in range(4)]
    assert len({tuple(ids) for ids in got}) == 1  # four quarters on one GPU
    assert g.on_start_worker("whole", gpus.tag_request(request("rw", {"GPU": U})).job_id) != got[0]
