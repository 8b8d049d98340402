"""init() and shutdown(): fast start, reinit rules, complete cleanup, no orphans when the driver is killed,
and user modules that workers import by name."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import p2pcompute as p2p
import p2pcompute.api
from p2pcompute import errors

from itest_util import alive, descendants, run_driver, wait_until

pytestmark = pytest.mark.integration


# Decorated at import time, before any init(): must work (Ray allows it).
@p2p.remote
def _double(x):
    return 2 * x


@pytest.mark.timeout(60)
def test_init_shutdown_cleans_up_everything(fresh_cluster, monkeypatch):
    before = {p.pid for p in descendants()}
    start = time.monotonic()
    info = p2p.init(num_cpus=2)
    elapsed_s = time.monotonic() - start
    # A bound against a hang, not a speed test: init()'s speed is measured in benchmarks/compare.py.
    assert elapsed_s < 10.0, f"init() took {elapsed_s:.2f} s"
    assert p2p.is_initialized()
    assert isinstance(info, dict) and info["node_id"]

    with pytest.raises(RuntimeError, match="ignore_reinit_error"):
        p2p.init(num_cpus=2)
    assert p2p.init(num_cpus=2, ignore_reinit_error=True)["node_id"] == info["node_id"]

    # Make the peer start workers, so shutdown has real grandchildren to clean up.
    assert p2p.get([_double.remote(i) for i in range(4)], timeout=30) == [0, 2, 4, 6]
    peer = p2pcompute.api._state["peer"]
    session_dir, store_dir = peer.session_dir, peer.store_dir
    assert os.path.isdir(session_dir) and os.path.isdir(store_dir)
    assert store_dir.startswith("/dev/shm/")
    started = [p.pid for p in descendants() if p.pid not in before]
    assert len(started) >= 2, "expected the peer and at least one worker"

    p2p.shutdown()
    assert not p2p.is_initialized()
    wait_until(lambda: not alive(started), 10, what="peer and workers to exit after shutdown()")
    assert not [p for p in descendants() if p.pid not in before]
    assert not os.path.exists(session_dir)
    assert not os.path.exists(store_dir)

    # Used after shutdown(): with auto-init off, a clear error (with it on, as in Ray, a new embedded peer).
    monkeypatch.setenv("P2P_AUTO_INIT", "0")
    with pytest.raises(errors.NotInitializedError):
        p2p.get(p2p.put(1))
    with pytest.raises(errors.NotInitializedError):
        _double.remote(1)
    with pytest.raises(errors.NotInitializedError):
        p2p.cluster_resources()
    p2p.shutdown()  # a second shutdown is harmless


@pytest.mark.timeout(60)
def test_init_again_after_shutdown(fresh_cluster):
    p2p.init(num_cpus=1)
    first = p2pcompute.api._state["peer"].session_dir
    p2p.shutdown()
    p2p.init(num_cpus=1)
    assert p2pcompute.api._state["peer"].session_dir != first
    assert p2p.get(_double.remote(21), timeout=30) == 42


@pytest.mark.timeout(60)
def test_init_rejects_bad_options_and_starts_nothing(fresh_cluster):
    before = {p.pid for p in descendants()}
    with pytest.raises(errors.InvalidArgumentError, match="num_cpuz"):
        p2p.init(num_cpuz=2)
    with pytest.raises(errors.InvalidArgumentError, match="num_cpus"):
        p2p.init(num_cpus=-1)
    with pytest.raises(errors.InvalidArgumentError, match="tpu"):
        p2p.init(num_cpus=1, resources={"tpu": "lots"})
    assert not p2p.is_initialized()
    assert not [p for p in descendants() if p.pid not in before]


@pytest.mark.timeout(60)
def test_sigkilled_driver_leaves_no_processes(tmp_path):
    """The embedded peer watches its parent: kill -9 of the driver must take the peer and workers with it."""
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent("""
        import os, sys, time
        import psutil
        import p2pcompute as p2p
        p2p.init(num_cpus=2)

        @p2p.remote
        def pid():
            return os.getpid()

        p2p.get([pid.remote() for _ in range(4)], timeout=30)  # make the peer start workers
        import p2pcompute.api
        me = psutil.Process()
        kids = [p.pid for p in me.children(recursive=True)]
        peer = p2pcompute.api._state["peer"]
        print(peer.session_dir, peer.store_dir, " ".join(map(str, kids)), flush=True)
        time.sleep(600)  # wait to be killed
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=str(tmp_path))
    try:
        line = proc.stdout.readline()
        if not line:
            proc.wait(10)
            pytest.fail(f"the driver exited early:\n{proc.stderr.read()}")
        session_dir, store_dir, *kids = line.split()
        kids = [int(x) for x in kids]
        assert os.path.isdir(store_dir)
        assert len(kids) >= 2, f"expected the peer and its workers among the driver's children: {line!r}"
        assert alive(kids)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc.stdout.close()
        proc.stderr.close()
    wait_until(lambda: not alive(kids), 10, what=f"peer/worker processes {kids} to exit after the driver died")
    # The peer frees the machine's shared memory on its way out.
    wait_until(lambda: not os.path.exists(store_dir), 5, what=f"{store_dir} to be removed")
    # The peer leaves its session directory (sockets, logs) after the driver is killed: keep /tmp clean.
    shutil.rmtree(session_dir, ignore_errors=True)


@pytest.mark.timeout(60)
def test_user_module_functions_run_in_workers(tmp_path):
    """A task defined in an importable user module (not __main__) travels by name: workers import it
    from the driver's sys.path."""
    pkg = tmp_path / "extra" / "mypkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "tasks.py").write_text(textwrap.dedent("""
        import p2pcompute as p2p

        MARK = "from-mypkg"

        @p2p.remote
        def where(x):
            import mypkg.tasks, os
            return (x + 1, mypkg.tasks.MARK, os.getpid())
    """))
    proc = run_driver(f"""
        import os, sys
        sys.path.insert(0, {str(tmp_path / "extra")!r})
        import p2pcompute as p2p
        import mypkg.tasks
        p2p.init(num_cpus=2)
        results = p2p.get([mypkg.tasks.where.remote(i) for i in range(3)], timeout=30)
        assert [r[0] for r in results] == [1, 2, 3], results
        assert all(r[1] == "from-mypkg" for r in results), results
        assert all(r[2] != os.getpid() for r in results), results
        print("OK")
        p2p.shutdown()
    """, tmp_path)
    assert "OK" in proc.stdout
