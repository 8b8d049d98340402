"""Output of tasks and actors reaches the driver's stdout/stderr, prefixed with who printed it.

One driver, run in a subprocess for the whole module, prints and logs in every way the tests below check;
each test asserts on its captured output. The driver's streams are wrapped in a tee installed before init(),
so the driver itself waits (with a deadline) for the lines it expects instead of sleeping, then exits.
"""

from __future__ import annotations

import re

import pytest

from itest_util import run_driver

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

TEE = """
import os, sys, threading, time

class Tee:
    def __init__(self, inner):
        self.inner, self.seen, self.lock = inner, [], threading.Lock()
    def write(self, text):
        with self.lock:
            self.seen.append(text)
        return self.inner.write(text)
    def flush(self):
        self.inner.flush()
    def text(self):
        with self.lock:
            return "".join(self.seen)
    def __getattr__(self, name):
        return getattr(self.inner, name)

sys.stdout, sys.stderr = Tee(sys.stdout), Tee(sys.stderr)

def wait_for(stream, needles, timeout_s):
    deadline = time.monotonic() + timeout_s
    while not all(n in stream.text() for n in needles):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True
"""

DRIVER = TEE + """
import logging
import p2pcompute as p2p
p2p.init(num_cpus=2)

@p2p.remote
def talker(x):
    print("task-stdout", x)
    print("task-stderr", x, file=sys.stderr)
    logging.warning("task-logging %s", x)
    return os.getpid()

@p2p.remote
class Speaker:
    def say(self, x):
        print("actor-stdout", x)
        logging.warning("actor-logging %s", x)
        return os.getpid()

@p2p.remote
def child():
    print("child-stdout")
    return os.getpid()

@p2p.remote
def parent():
    return p2p.get(child.remote())

@p2p.remote
def partial():
    print("partial-line", end="")
    return os.getpid()

@p2p.remote
def threaded():
    t = threading.Thread(target=print, args=("thread-stdout",))
    t.start()
    t.join()
    return os.getpid()

speaker = Speaker.remote()
pids = p2p.get([talker.remote(1), speaker.say.remote(2), parent.remote(), partial.remote(), threaded.remote()],
               timeout=30)
print("PIDS", *pids, os.getpid())
# Lines are sent before each task's reply, so they should all be here already; the deadline is a backstop,
# and the tests below check each line, so a missing one fails only its own test.
wait_for(sys.stdout, ["task-stdout 1", "actor-stdout 2", "child-stdout", "partial-line", "thread-stdout"], 10)
wait_for(sys.stderr, ["task-stderr 1", "task-logging 1", "actor-logging 2"], 10)
p2p.shutdown()
"""


@pytest.fixture(scope="module")
def output(tmp_path_factory) -> tuple[str, str, dict]:
    proc = run_driver(DRIVER, tmp_path_factory.mktemp("output"))
    m = re.search(r"^PIDS (\d+) (\d+) (\d+) (\d+) (\d+) (\d+)$", proc.stdout, re.M)
    assert m, (proc.stdout, proc.stderr)
    pids = dict(zip(["talker", "Speaker", "child", "partial", "threaded", "driver"], map(int, m.groups())))
    return proc.stdout, proc.stderr, pids


def test_print_in_task_and_actor_reaches_driver_with_prefix(output):
    out, err, pids = output
    assert pids["talker"] != pids["driver"] and pids["Speaker"] != pids["driver"]
    assert re.search(rf"^\(talker pid={pids['talker']}\) task-stdout 1$", out, re.M), out
    assert re.search(rf"^\(Speaker pid={pids['Speaker']}\) actor-stdout 2$", out, re.M), out
    assert re.search(rf"^\(talker pid={pids['talker']}\) task-stderr 1$", err, re.M), err
    # Each line arrives once, on the right stream.
    assert out.count("task-stdout 1") == 1 and "task-stderr" not in out
    assert "task-stdout" not in err


def test_logging_in_task_and_actor_reaches_driver_with_prefix(output):
    """User logging goes through the forwarded stderr, not into the worker's own log file."""
    out, err, pids = output
    assert re.search(rf"^\(talker pid={pids['talker']}\) .*task-logging 1", err, re.M), err
    assert re.search(rf"^\(Speaker pid={pids['Speaker']}\) .*actor-logging 2", err, re.M), err


def test_print_in_nested_task_reaches_driver(output):
    """A nested task's owner is a worker; its lines must still reach the job's driver."""
    out, _, pids = output
    assert re.search(rf"^\(child pid={pids['child']}\) child-stdout$", out, re.M), out


def test_partial_line_is_flushed_when_the_task_ends(output):
    """print(..., end="") is flushed with its own task's prefix, not glued to the next task's output."""
    out, _, pids = output
    assert re.search(rf"^\(partial pid={pids['partial']}\) partial-line$", out, re.M), out


def test_print_from_thread_in_task_reaches_driver(output):
    """A thread the task starts has no task context of its own; its lines still reach the driver."""
    out, _, pids = output
    assert re.search(rf"^\(.*pid={pids['threaded']}\) thread-stdout$", out, re.M), out


def test_output_printed_before_return_is_not_lost_at_shutdown(tmp_path):
    """Lines a task prints must reach the driver before get() returns, so a script that exits right after
    get() loses nothing — even when the worker's I/O thread is busy (made so here for 0.2 s)."""
    proc = run_driver("""
import time
import p2pcompute as p2p
import p2pcompute.api
p2p.init(num_cpus=1)

@p2p.remote
def talker():
    # Simulate a busy I/O thread in the worker (e.g. sending a large object elsewhere).
    p2pcompute.api._state["runtime"].call_soon(lambda: time.sleep(0.2))
    print("last words")
    return 1

assert p2p.get(talker.remote(), timeout=30) == 1
print("GOT", flush=True)
p2p.shutdown()
""", tmp_path)
    assert "last words" in proc.stdout
    # ...and before get() returned, not merely before exit.
    assert proc.stdout.index("last words") < proc.stdout.index("GOT")


@pytest.mark.slow
def test_handled_worker_death_prints_nothing_later(tmp_path):
    """A crash the runtime handled (the task failed with WorkerCrashedError) must not surface again as
    noise on the user's stderr. The driver has to outlive the transport's unreachable window to show it:
    the system config shortens that window from 10 s to 1 s, and the driver outlives it."""
    proc = run_driver("""
import os, time
import p2pcompute as p2p
from p2pcompute import errors
p2p.init(num_cpus=1, _system_config={"transport": {"unreachable_after_ms": 1000}})

@p2p.remote(max_retries=0)
def crash():
    os._exit(1)

@p2p.remote
def ok():
    return 1

try:
    p2p.get(crash.remote(), timeout=30)
except errors.WorkerCrashedError:
    print("CRASHED", flush=True)
assert p2p.get(ok.remote(), timeout=30) == 1
time.sleep(1.5)  # outlive the (configured) 1 s window in which the spurious warning would appear
p2p.shutdown()
""", tmp_path, timeout_s=60)
    assert "CRASHED" in proc.stdout
    assert "unreachable" not in proc.stderr, proc.stderr
