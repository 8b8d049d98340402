"""The local processes a peer watches: workers it starts (through the fork server) and drivers that attach.

Exits are noticed at once: a driver through a pidfd, a worker through the fork server's exit report (or a
pidfd when it had to be started as a fresh interpreter). `on_exit(proc, code)` is called for each.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time

from p2pcompute import config

log = logging.getLogger("p2pcompute.peer")


class Proc:
    """A local process: a worker the peer started, or a driver that registered."""

    __slots__ = ("proc_id", "kind", "pid", "pidfd", "popen", "addr", "task_addr", "job_id", "job_env",
                 "stop_deadline", "started_ns", "log_path")

    def __init__(self, proc_id: str, kind: str):
        self.proc_id = proc_id
        self.kind = kind
        self.pid = 0
        self.pidfd = -1
        self.popen: subprocess.Popen | None = None
        self.addr = ""
        self.task_addr = ""
        self.job_id = ""
        self.job_env: dict = {}
        self.stop_deadline = 0.0
        self.started_ns = 0
        self.log_path = ""


class Processes:
    def __init__(self, transport, log_dir: str, env: dict, on_exit):
        self.transport = transport
        self.log_dir = log_dir
        self.env = env
        self.on_exit = on_exit
        self.procs: dict[str, Proc] = {}
        self._by_pidfd: dict[int, Proc] = {}
        self._by_pid: dict[int, Proc] = {}
        self._zygote: subprocess.Popen | None = None
        self._zygote_buf = b""
        self._start_zygote()

    # ---- watching -----------------------------------------------------------------------------------

    def watch_pid(self, pid: int) -> int:
        try:
            fd = os.pidfd_open(pid)
        except (ProcessLookupError, OSError):
            return -1
        self.transport.add_fd(fd)
        return fd

    def add_driver(self, proc_id: str, pid: int) -> Proc:
        proc = Proc(proc_id, "driver")
        proc.pid = pid
        proc.pidfd = self.watch_pid(pid)
        if proc.pidfd >= 0:
            self._by_pidfd[proc.pidfd] = proc
        self.procs[proc_id] = proc
        return proc

    def on_fd(self, fd: int) -> bool:
        """Handle a ready fd if it is ours; returns whether it was."""
        if self._zygote is not None and fd == self._zygote.stdout.fileno():
            self._on_zygote_output()
            return True
        proc = self._by_pidfd.get(fd)
        if proc is not None:
            self.reaped(proc, None)
            return True
        return False

    def reaped(self, proc: Proc, code: int | None) -> None:
        if self.procs.get(proc.proc_id) is not proc:
            return
        if proc.pidfd >= 0:
            self.transport.remove_fd(proc.pidfd)
            os.close(proc.pidfd)
            self._by_pidfd.pop(proc.pidfd, None)
            proc.pidfd = -1
        if proc.popen is not None:
            code = proc.popen.wait()
        self._by_pid.pop(proc.pid, None)
        del self.procs[proc.proc_id]
        self.on_exit(proc, code)

    # ---- starting workers ---------------------------------------------------------------------------

    def _start_zygote(self) -> None:
        """Workers are forked from a zygote that imported them once: milliseconds instead of an interpreter."""
        try:
            self._zygote = subprocess.Popen([sys.executable, "-m", "p2pcompute.runtime.zygote"],
                                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=self.env,
                                            close_fds=True)
        except OSError as exc:
            log.warning("no fork server (%s); workers start as fresh interpreters", exc)
            self._zygote = None
            return
        os.set_blocking(self._zygote.stdout.fileno(), False)
        self.transport.add_fd(self._zygote.stdout.fileno())

    def _on_zygote_output(self) -> None:
        zygote = self._zygote
        try:
            chunk = os.read(zygote.stdout.fileno(), 65536)
        except BlockingIOError:
            return
        if not chunk:
            log.warning("the worker fork server exited (%s); workers now start as fresh interpreters",
                        exit_reason(zygote.wait()))
            self.transport.remove_fd(zygote.stdout.fileno())
            self._zygote = None
            return
        self._zygote_buf += chunk
        while b"\n" in self._zygote_buf:
            line, self._zygote_buf = self._zygote_buf.split(b"\n", 1)
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if "id" in event:
                proc = self.procs.get(event["id"])
                if proc is not None:
                    proc.pid = event["pid"]
                    self._by_pid[proc.pid] = proc
            elif "status" in event:
                proc = self._by_pid.get(event["pid"])
                if proc is not None:
                    self.reaped(proc, event["status"])

    def start_worker(self, worker_id: str, job_id: str, argv: list[str]) -> Proc | None:
        proc = Proc(worker_id, "worker")
        proc.job_id = job_id
        proc.started_ns = time.monotonic_ns()
        proc.log_path = os.path.join(self.log_dir, f"worker-{worker_id}.log")
        if self._zygote is not None:
            try:
                self._zygote.stdin.write(json.dumps({"id": worker_id, "argv": argv,
                                                     "log": proc.log_path}).encode() + b"\n")
                self._zygote.stdin.flush()
                self.procs[worker_id] = proc
                return proc
            except OSError:
                self._zygote = None
        args = [sys.executable, "-m", "p2pcompute.runtime.worker"] + argv + ["--parent-pid", str(os.getpid())]
        try:
            with open(proc.log_path, "ab") as out:
                proc.popen = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                              env=self.env, close_fds=True)
        except OSError as exc:
            log.error("cannot start a worker process: %s", exc)
            return None
        proc.pid = proc.popen.pid
        proc.pidfd = self.watch_pid(proc.pid)
        if proc.pidfd >= 0:
            self._by_pidfd[proc.pidfd] = proc
        self.procs[worker_id] = proc
        return proc

    # ---- stopping -----------------------------------------------------------------------------------

    def signal(self, proc: Proc, sig: int) -> None:
        try:
            if proc.popen is not None:
                proc.popen.send_signal(sig)
            elif proc.pid and proc.kind == "worker":
                os.kill(proc.pid, sig)
        except (OSError, ProcessLookupError):
            pass

    def stop(self, proc: Proc, grace_s: float = 2.0) -> None:
        self.signal(proc, signal.SIGTERM)
        proc.stop_deadline = time.monotonic() + grace_s

    def on_tick(self) -> None:
        now = time.monotonic()
        for proc in list(self.procs.values()):
            if proc.stop_deadline and now > proc.stop_deadline:
                self.signal(proc, signal.SIGKILL)
                proc.stop_deadline = 0.0

    def shutdown(self, grace_s: float = 2.0) -> None:
        workers = [p for p in self.procs.values() if p.kind == "worker"]
        for proc in workers:
            self.signal(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for proc in workers:
            _wait_gone(proc, deadline)
        if self._zygote is not None:
            try:
                self._zygote.stdin.close()
                self._zygote.wait(grace_s)
            except (OSError, subprocess.TimeoutExpired):
                self._zygote.kill()


def child_env(token: str | None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([config.package_root()] +
                                        [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.pop("P2P_CLUSTER_TOKEN", None)
    if token:
        env["P2P_CLUSTER_TOKEN"] = token
    return env


def _wait_gone(proc: Proc, deadline: float) -> None:
    """Wait for a worker to exit; SIGKILL it at the deadline."""
    if proc.popen is not None:
        try:
            proc.popen.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            proc.popen.wait()
        return
    if not proc.pid:
        return
    while time.monotonic() < deadline:
        try:
            os.kill(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.01)  # a fork-server child is not ours to wait for: poll its pid until the deadline
    try:
        os.kill(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def exit_reason(code: int | None) -> str:
    if code is None:
        return "exited"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}"
    return f"exited with code {code}"
