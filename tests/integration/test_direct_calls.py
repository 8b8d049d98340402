"""A driver's user threads drive the loop themselves (runtime/driving.py): the I/O thread parks during
one-at-a-time calls and takes the loop back when they stop; Ctrl-C during a pass is deferred to its end, so
the core is never left half-way through a message."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import p2pcompute as p2p
import p2pcompute.api

from itest_util import run_driver, wait_until

pytestmark = pytest.mark.integration


@p2p.remote
def _echo(x):
    return x


@p2p.remote
def _touch(path):
    with open(path, "w") as f:
        f.write("ran")
    return path


@pytest.mark.timeout(60)
def test_sync_calls_are_driven_by_the_caller_and_the_io_thread_takes_the_loop_back(cluster, tmp_path):
    rt = p2pcompute.api._runtime()
    assert p2p.get([_echo.remote(i) for i in range(4)]) == [0, 1, 2, 3]
    for i in range(200):
        assert p2p.get(_echo.remote(i)) == i
    # One-at-a-time calls: the I/O thread was asked to park and the main thread ran the passes.
    assert rt._parked or rt._park_wanted or rt._last_drive > 0
    assert rt._last_drive > 0, "the main thread never drove the loop"

    # A task submitted with no get after it still runs: the parked I/O thread takes the loop back.
    marker = tmp_path / "ran"
    ref = _touch.remote(str(marker))
    wait_until(marker.exists, 20, what="a fire-and-forget task submitted while the I/O thread was parked")
    wait_until(lambda: not rt._parked, 10, what="the I/O thread to take the loop back")
    assert p2p.get(ref) == str(marker)


@pytest.mark.timeout(90)
def test_threads_calling_get_at_once_all_finish(cluster):
    errors: list = []

    def caller(k: int) -> None:
        try:
            for i in range(150):
                assert p2p.get(_echo.remote((k, i)), timeout=30) == (k, i)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    # The main thread calls too, so drivers on several threads contend for the loop.
    for i in range(150):
        assert p2p.get(_echo.remote(("main", i)), timeout=30) == ("main", i)
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a thread is stuck in get()"
    assert not errors, errors


_CTRL_C_DRIVER = textwrap.dedent("""
    import os, sys, time
    import p2pcompute as p2p

    p2p.init(num_cpus=2)

    @p2p.remote
    def echo(x):
        return x

    @p2p.remote
    def slow(path):
        open(path, "w").close()
        time.sleep(60)

    # 1. Interrupted while waiting for a long task.
    marker = sys.argv[1]
    ref = slow.remote(marker)
    print("waiting", flush=True)
    try:
        p2p.get(ref)
        print("not interrupted", flush=True)
    except KeyboardInterrupt:
        print("interrupted in get", flush=True)
    p2p.cancel(ref, force=True)
    del ref
    assert p2p.get([echo.remote(i) for i in range(10)], timeout=30) == list(range(10))

    # 2. Interrupted many times in a tight loop of one-at-a-time calls: whatever the moment, the runtime
    # carries on (an interrupt in the middle of a reply would leave the core waiting for ever).
    print("looping", flush=True)
    interrupts = 0
    i = 0
    deadline = time.monotonic() + 40
    while interrupts < 60 and time.monotonic() < deadline:
        try:
            while True:
                assert p2p.get(echo.remote(i), timeout=30) == i
                i += 1
        except KeyboardInterrupt:
            interrupts += 1
            print("interrupt", interrupts, flush=True)
    assert p2p.get([echo.remote(k) for k in range(50)], timeout=30) == list(range(50))
    # Nothing half-done: every task this driver submitted has left the owner's table.
    from p2pcompute import api
    core = api._runtime().core
    deadline = time.monotonic() + 10
    while (core.tasks or core.submitter.queued()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not core.tasks, f"{len(core.tasks)} tasks never finished: {list(core.tasks)[:3]}"
    print(f"done {interrupts} {i}", flush=True)
    p2p.shutdown()
    print("shut down", flush=True)
""")


@pytest.mark.timeout(120)
def test_ctrl_c_during_get_raises_and_the_runtime_carries_on(tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(_CTRL_C_DRIVER)
    marker = tmp_path / "slow-started"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd()] + sys.path))
    proc = subprocess.Popen([sys.executable, str(script), str(marker)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=str(tmp_path))
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        wait_until(marker.exists, 60, what="the slow task to start")
        wait_until(lambda: "waiting\n" in lines, 10, what="the driver to block in get")
        proc.send_signal(signal.SIGINT)
        wait_until(lambda: "looping\n" in lines, 30, what="the driver to carry on after Ctrl-C in get")
        assert "interrupted in get\n" in lines
        sent = 0
        while proc.poll() is None and sent < 60:
            seen = sum(1 for line in lines if line.startswith("interrupt "))
            if seen == sent:
                proc.send_signal(signal.SIGINT)
                sent += 1
                wait_until(lambda: proc.poll() is not None or
                           sum(1 for line in lines if line.startswith("interrupt ")) >= sent, 30,
                           what=f"interrupt {sent} to be handled")
            # Not a wait for anything: it lands the next interrupt at a different moment of the loop.
            time.sleep(0.0007 * (sent % 11))
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            subprocess.run(["py-spy", "dump", "--pid", str(proc.pid)], check=False)
            raise AssertionError("the driver did not finish:\n" + "".join(lines[-10:])) from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(5)
    out = "".join(lines)
    assert proc.returncode == 0, out
    done = [line for line in lines if line.startswith("done ")]
    assert done, out
    interrupts, calls = map(int, done[0].split()[1:])
    assert interrupts == 60 and calls > 60, out


_OWN_HANDLER_DRIVER = textwrap.dedent("""
    import signal
    import p2pcompute as p2p
    from p2pcompute import api

    seen = []
    signal.signal(signal.SIGINT, lambda s, f: seen.append(s))  # the program's own handler
    p2p.init(num_cpus=1)

    @p2p.remote
    def echo(x):
        return x

    rt = api._runtime()
    assert not rt._may_drive(), "the main thread must not run passes under a handler that may raise"
    assert [p2p.get(echo.remote(i)) for i in range(50)] == list(range(50))
    assert rt._last_drive == 0
    assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    p2p.shutdown()
    print("ok", flush=True)
""")


@pytest.mark.timeout(60)
def test_a_program_with_its_own_sigint_handler_keeps_it_and_calls_go_through_the_io_thread(tmp_path):
    out = run_driver(_OWN_HANDLER_DRIVER, tmp_path, timeout_s=50)
    assert "ok" in out.stdout, out.stdout + out.stderr
