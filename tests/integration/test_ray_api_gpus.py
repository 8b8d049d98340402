"""GPU tasks and actors (fake GPUs: `init(num_gpus=2)`; no real GPU needed): each GPU lease runs in a worker
of its own that never ran anything else, with CUDA_VISIBLE_DEVICES set to its assigned GPUs, and the worker
goes when the lease ends, as Ray's GPU workers do."""

from __future__ import annotations

import json

import pytest

from itest_util import run_driver

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


def test_gpu_tasks_get_their_own_workers_and_gpu_ids(tmp_path):
    proc = run_driver("""
        import json, os, time
        import psutil
        import p2pcompute as p2p

        p2p.init(num_cpus=2, num_gpus=2)

        def together(barrier_dir, n):
            # Both tasks must be running at once: each waits (bounded) until all n have arrived.
            open(os.path.join(barrier_dir, str(os.getpid())), "w").close()
            deadline = time.monotonic() + 30
            while len(os.listdir(barrier_dir)) < n and time.monotonic() < deadline:
                time.sleep(0.005)
            return len(os.listdir(barrier_dir)) >= n

        def report():
            return {"pid": os.getpid(), "env": os.environ.get("CUDA_VISIBLE_DEVICES"), "ids": p2p.get_gpu_ids()}

        @p2p.remote
        def cpu_task():
            return report()

        @p2p.remote(num_gpus=1)
        def gpu_task(barrier_dir, n):
            return dict(report(), together=together(barrier_dir, n))

        @p2p.remote(num_gpus=0.5)
        def half_task(barrier_dir, n):
            return dict(report(), together=together(barrier_dir, n))

        @p2p.remote(num_gpus=2)
        class Trainer:
            def where(self):
                return report()

        out = {"driver_ids": p2p.get_gpu_ids()}
        out["cpu_before"] = p2p.get([cpu_task.remote() for _ in range(4)], timeout=60)
        os.makedirs("b1")
        out["gpu"] = p2p.get([gpu_task.remote("b1", 2) for _ in range(2)], timeout=60)
        os.makedirs("b2")
        out["half"] = p2p.get([half_task.remote("b2", 2) for _ in range(2)], timeout=60)
        out["cpu_after"] = p2p.get([cpu_task.remote() for _ in range(4)], timeout=60)
        trainer = Trainer.remote()
        out["actor"] = p2p.get(trainer.where.remote(), timeout=60)
        # A GPU task's worker goes when its lease ends.
        gpu_pids = [r["pid"] for r in out["gpu"] + out["half"]]
        deadline = time.monotonic() + 30
        while any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in gpu_pids):
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)
        out["gpu_workers_left"] = [p for p in gpu_pids if psutil.pid_exists(p) and
                                   psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        print("RESULT " + json.dumps(out))
    """, tmp_path, timeout_s=85)
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][0]
    out = json.loads(line[len("RESULT "):])
    assert out["driver_ids"] == []
    cpu_pids = {r["pid"] for r in out["cpu_before"] + out["cpu_after"]}
    for r in out["cpu_before"] + out["cpu_after"]:
        assert r["env"] is None and r["ids"] == [], r
    # Two whole-GPU tasks running at once: one GPU each, different ones, and set as CUDA_VISIBLE_DEVICES.
    assert all(r["together"] for r in out["gpu"])
    assert sorted(r["ids"][0] for r in out["gpu"]) == [0, 1]
    for r in out["gpu"] + out["half"]:
        assert r["env"] == ",".join(str(i) for i in r["ids"]) and len(r["ids"]) == 1, r
        assert r["pid"] not in cpu_pids, "a GPU task ran in a worker that ran CPU tasks"
    assert len({r["pid"] for r in out["gpu"] + out["half"]}) == 4, "each GPU lease has a worker of its own"
    # Two halves running at once share one GPU (packed), leaving the other whole.
    assert all(r["together"] for r in out["half"])
    assert out["half"][0]["ids"] == out["half"][1]["ids"]
    assert sorted(out["actor"]["ids"]) == [0, 1] and out["actor"]["pid"] not in cpu_pids
    assert out["gpu_workers_left"] == []
