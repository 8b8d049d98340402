"""Helpers shared by the integration tests (kept out of conftest.py so test modules can import them)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from typing import Callable

import psutil
import pytest

# ---- helpers --------------------------------------------------------------------------------------------


def wait_until(pred: Callable[[], object], timeout_s: float, interval_s: float = 0.01, what: str = "") -> object:
    """Poll `pred` until it returns something truthy; fail the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what or getattr(pred, '__name__', pred)}")
        time.sleep(interval_s)  # polling a condition owned by another process, bounded by the deadline


def descendants(pid: int | None = None) -> list[psutil.Process]:
    """Live (non-zombie) descendants of `pid` (default: this process)."""
    try:
        procs = psutil.Process(pid or os.getpid()).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [p for p in procs if _alive(p)]


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def alive(pids) -> list[int]:
    out = []
    for pid in pids:
        try:
            if _alive(psutil.Process(pid)):
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def run_driver(code: str, tmp_path, *, timeout_s: float = 60, name: str = "driver.py",
               check: bool = True) -> subprocess.CompletedProcess:
    """Run `code` as a driver script in a fresh interpreter and return its captured output.

    The script is a real file (so `__main__.__file__` exists, as in a user's script) in `tmp_path`.
    """
    script = tmp_path / name
    script.write_text(textwrap.dedent(code))
    env = dict(os.environ)
    env.pop("P2P_ADDRESS", None)
    env.pop("P2P_TOKEN", None)
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.run([sys.executable, str(script)], cwd=str(tmp_path), env=env, capture_output=True,
                          text=True, timeout=timeout_s)
    if check and proc.returncode != 0:
        pytest.fail(f"driver exited with {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    return proc


# ---- the shared cluster between tests -------------------------------------------------------------------

# Leases linger 200 ms and a killed worker exits within a second or two: 20 s is far beyond.
SETTLE_S = float(os.environ.get("P2P_TEST_SETTLE_S", "20"))


class SharedClusterLeak(UserWarning):
    """A test left CPUs held on the shared cluster after it ended."""


def settle_shared_cluster(test_id: str) -> None:
    """After a test on the shared in-process cluster: every CPU must come back. If some do not, the test left
    work behind (a task still running, an actor alive, a lease never returned) and the tests after it would
    run short of CPUs and fail for no fault of theirs. So the shared cluster is stopped (the next test starts
    a fresh one) and a warning names the test, with what still held the CPUs, for the summary."""
    import p2pcompute as p2p
    if not p2p.is_initialized():
        return

    def cpus():
        return p2p.available_resources().get("CPU", 0), p2p.cluster_resources().get("CPU", 0)

    deadline = time.monotonic() + SETTLE_S
    available, total = cpus()
    while available < total and time.monotonic() < deadline:
        time.sleep(0.05)  # polling the peer's resource view, bounded by the deadline
        available, total = cpus()
    if available >= total:
        return
    from p2pcompute.util import state
    try:
        tasks = [(t.get("name"), t.get("state")) for t in state.list_tasks(timeout=5)
                 if t.get("state") not in ("FINISHED", "FAILED")]
        actors = [(a.get("class_name"), a.get("state")) for a in state.list_actors(timeout=5)
                  if a.get("state") != "DEAD"]
        from p2pcompute import api
        from p2pcompute.runtime import messages as rm
        rt = api._runtime()
        status = rt.peer_request(lambda rid: rm.PeerStatusRequest(rt.addr, rid)).status
        leases = [(lease["holder"], lease["worker"], lease["shape"]) for lease in status["leases"]]
        workers = [(w["id"], w["state"], w["lease"], w["blocked"]) for w in status["workers"]]
        owned = {key[1]: [(h.worker_id, sorted(h.inflight), sorted(h.stealing), h.draining, h.wanted)
                          for h in state.leases] + [f"queued {len(state.queue)}, requests {len(state.requests)}"]
                 for key, state in rt.submitter.keys.items()}
    except Exception as exc:  # noqa: BLE001 - a diagnostic; the warning says it could not be gathered
        tasks, actors, leases, workers, owned = f"unavailable: {exc!r}", "", "", "", ""
    import warnings
    warnings.warn(SharedClusterLeak(
        f"{test_id} left {total - available:g} of {total:g} CPUs held {SETTLE_S:g} s after it ended "
        f"(tasks not finished: {tasks}; actors alive: {actors}; leases (holder, worker, shape): {leases}; "
        f"workers (id, state, lease, blocked): {workers}; the driver's leases by function (worker, in flight, stealing, draining, wanted): {owned}); "
        f"the shared cluster was restarted"))
    p2p.shutdown()
