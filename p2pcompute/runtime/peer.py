"""The peer daemon: one per machine (or per `--home`), running the peer-side cores for real.

It owns the local worker processes and the shared-memory store directory, drives the lease core (and,
in a cluster, the membership core) with real time and ZeroMQ, and watches every local process with a
pidfd so a crash is noticed the moment it happens, not at the next timeout. It never runs user code.

The loop: poll sockets, pidfds and the wake-up fd; decode each frame (a bad frame is logged and dropped,
never fatal); hand it to the core that owns that message type; carry out the effects.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time

from p2pcompute import config
from p2pcompute.errors import RemoteProtocolError
from p2pcompute.lease import messages as lm
from p2pcompute.lease import resources
from p2pcompute.lease.core import Infeasible, LeaseCore, StartWorker, StopWorker
from p2pcompute.net import codec
from p2pcompute.net.effects import Send, Timer
from p2pcompute.net.transport import Context, CurveKeys, Transport, Waker
from p2pcompute.ownership import messages as om
from p2pcompute.ownership.store import LocalStore, remove_store_dir
from p2pcompute.runtime import messages as rm

log = logging.getLogger("p2pcompute.peer")

_TICK_NS = 50_000_000


class _Proc:
    """A local process this peer watches: a worker it started, or a driver that registered."""

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


class PeerDaemon:
    def __init__(self, *, peer_id: str, session_dir: str, store_dir: str, total: dict,
                 parent_pid: int = 0, tcp_host: str | None = None, tcp_port: int = 0,
                 advertise_host: str | None = None, token: str | None = None, prestart: int | None = None):
        self.peer_id = peer_id
        self.session_dir = session_dir
        self.store_dir = store_dir
        self.store = LocalStore(store_dir)
        self.token = token
        self.tcp_host = tcp_host
        self.advertise_host = advertise_host
        self.ctx = Context(CurveKeys.from_token(token) if token and tcp_host else None)
        self.transport = Transport(self.ctx, peer_id, "p", ipc_path=os.path.join(session_dir, "peer"),
                                   tcp_host=tcp_host, tcp_port=tcp_port, advertise_host=advertise_host)
        self.addr = self.transport.address
        self.waker = Waker()
        self.transport.add_fd(self.waker.fd)
        self.lease = LeaseCore(peer_id, self.addr, total)
        self.total = dict(total)
        self.procs: dict[str, _Proc] = {}
        self._by_pidfd: dict[int, _Proc] = {}
        self.objects: dict[str, int] = {}  # object id -> bytes, for accounting
        self.store_used = 0
        self.parent_pid = parent_pid
        self._parent_fd = -1
        self._running = True
        self._deadline_ns = 0
        self.started_at = time.time()
        self.log_dir = os.path.join(session_dir, "logs")
        os.makedirs(self.log_dir, exist_ok=True)
        if parent_pid:
            self._parent_fd = self._watch_pid(parent_pid)
            if self._parent_fd < 0:
                raise SystemExit("the process that started this embedded peer is already gone")
        self._zygote: subprocess.Popen | None = None
        self._zygote_buf = b""
        self._by_pid: dict[int, _Proc] = {}
        self._start_zygote()
        count = prestart if prestart is not None else self.lease.pool_size
        self._run(self.lease.prestart(time.monotonic_ns(), count))

    # ---- watching processes -------------------------------------------------------------------------

    def _watch_pid(self, pid: int) -> int:
        try:
            fd = os.pidfd_open(pid)
        except (ProcessLookupError, OSError):
            return -1
        self.transport.add_fd(fd)
        return fd

    def _child_env(self) -> dict:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([config.package_root()] +
                                            [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        if self.token and self.tcp_host:
            env["P2P_CLUSTER_TOKEN"] = self.token
        return env

    def _start_zygote(self) -> None:
        """Workers are forked from a zygote that imported them once: milliseconds instead of an interpreter."""
        try:
            self._zygote = subprocess.Popen([sys.executable, "-m", "p2pcompute.runtime.zygote"],
                                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=self._child_env(),
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
                        _exit_reason(zygote.wait()))
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
                proc = self._by_pid.pop(event["pid"], None)
                if proc is not None:
                    self._on_exit(proc, event["status"])

    def _start_worker(self, eff: StartWorker) -> None:
        proc = _Proc(eff.worker_id, "worker")
        proc.job_id = eff.job_id
        proc.started_ns = time.monotonic_ns()
        argv = ["--peer", self.addr_for_locals(), "--worker-id", eff.worker_id, "--node-id", self.peer_id,
                "--sock-dir", self.session_dir]
        if self.tcp_host:
            argv += ["--tcp-host", self.tcp_host]
            if self.advertise_host:
                argv += ["--advertise-host", self.advertise_host]
        proc.log_path = os.path.join(self.log_dir, f"worker-{eff.worker_id}.log")
        if self._zygote is not None:
            try:
                self._zygote.stdin.write(json.dumps({"id": eff.worker_id, "argv": argv,
                                                     "log": proc.log_path}).encode() + b"\n")
                self._zygote.stdin.flush()
                self.procs[proc.proc_id] = proc
                return
            except OSError:
                self._zygote = None
        args = [sys.executable, "-m", "p2pcompute.runtime.worker"] + argv + ["--parent-pid", str(os.getpid())]
        with open(proc.log_path, "ab") as out:
            try:
                proc.popen = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                              env=self._child_env(), close_fds=True)
            except OSError as exc:
                log.error("cannot start a worker process: %s", exc)
                self._run(self.lease.on_worker_died(time.monotonic_ns(), eff.worker_id, f"failed to start: {exc}"))
                return
        proc.pid = proc.popen.pid
        proc.pidfd = self._watch_pid(proc.pid)
        self.procs[proc.proc_id] = proc
        if proc.pidfd >= 0:
            self._by_pidfd[proc.pidfd] = proc

    def addr_for_locals(self) -> str:
        return self.addr

    def _on_exit(self, proc: _Proc, code: int | None = None) -> None:
        """A watched process ended: reap it, free what it held, and tell everyone who cares."""
        if proc.proc_id not in self.procs:
            return
        if proc.pidfd >= 0:
            self.transport.remove_fd(proc.pidfd)
            os.close(proc.pidfd)
            self._by_pidfd.pop(proc.pidfd, None)
            proc.pidfd = -1
        reason = "exited"
        if proc.popen is not None:
            code = proc.popen.wait()
        if code is not None:
            reason = _exit_reason(code)
            if code not in (0, -signal.SIGTERM, -signal.SIGKILL):
                reason += f"; its output is in {proc.log_path}"
        self.procs.pop(proc.proc_id, None)
        log.info("%s %s (pid %d) %s", proc.kind, proc.proc_id, proc.pid, reason)
        now = time.monotonic_ns()
        effects = []
        if proc.kind == "worker":
            effects += self.lease.on_worker_died(now, proc.proc_id, reason)
        effects += self.lease.on_process_died(now, proc.proc_id)
        self._run(effects)
        died = codec.encode(rm.ProcessDied(proc.proc_id, proc.kind, reason, proc.addr, proc.task_addr))
        for other in self.procs.values():
            if other.addr:
                self.transport.send(other.addr, died)
        if proc.addr:
            self.transport.forget(proc.addr)
        if proc.task_addr:
            self.transport.forget(proc.task_addr)

    # ---- the loop -----------------------------------------------------------------------------------

    def stop(self) -> None:
        self._running = False
        self.waker.wake()

    def serve(self) -> None:
        try:
            while self._running:
                delta_ms = max(0.0, (self._deadline_ns - time.monotonic_ns()) / 1e6)
                frames, fds, events = self.transport.poll(min(delta_ms, 100.0))
                for fd in fds:
                    if fd == self.waker.fd:
                        self.waker.clear()
                    elif self._zygote is not None and fd == self._zygote.stdout.fileno():
                        self._on_zygote_output()
                    elif fd == self._parent_fd:
                        log.info("the driver that embedded this peer exited; shutting down")
                        self._running = False
                    else:
                        proc = self._by_pidfd.get(fd)
                        if proc is not None:
                            self._on_exit(proc)
                for sender, data in frames:
                    self._on_frame(sender, data)
                for ev in events:
                    log.warning("cannot reach %s: %s (%d messages dropped)", ev.address, ev.reason, ev.dropped)
                now = time.monotonic_ns()
                if now >= self._deadline_ns:
                    self._tick(now)
        finally:
            self.shutdown()

    def _tick(self, now: int) -> None:
        self._deadline_ns = now + _TICK_NS
        self._run(self.lease.on_tick(now))
        t = time.monotonic()
        for proc in list(self.procs.values()):
            if proc.stop_deadline and t > proc.stop_deadline:
                _signal(proc, signal.SIGKILL)
                proc.stop_deadline = 0.0

    def _on_frame(self, sender: str, data) -> None:
        try:
            msg = codec.decode(data)
        except RemoteProtocolError as exc:
            log.warning("dropped a bad frame from %s: %s", sender, exc)
            return
        try:
            self._dispatch(sender, msg)
        except Exception:
            log.exception("error while handling %s from %s", type(msg).__name__, sender)

    def _dispatch(self, sender: str, msg) -> None:
        now = time.monotonic_ns()
        t = type(msg)
        if t in (lm.RequestLease, lm.ReturnLease, lm.CancelLeaseRequest, lm.WorkerBlocked, lm.WorkerUnblocked):
            effects = self.lease.on_message(now, sender, msg)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s from %s -> %s", msg, sender, effects)
            self._run(effects)
        elif t is om.ObjectSealed:
            if msg.object_id not in self.objects:
                self.objects[msg.object_id] = msg.size
                self.store_used += msg.size
        elif t is om.FreeObjects:
            for oid in msg.object_ids:
                if isinstance(oid, str) and "/" not in oid:
                    self.store.delete(oid)
                    self.store_used -= self.objects.pop(oid, 0)
        elif t is rm.RegisterClient:
            self._on_register_client(sender, msg)
        elif t is rm.RegisterWorker:
            proc = self.procs.get(msg.worker_id)
            if proc is None:
                self.transport.send(msg.task_addr, codec.encode(rm.StopProcess("unknown worker")))
                return
            proc.task_addr = msg.task_addr
            proc.addr = proc.addr or msg.client_addr
            self._run(self.lease.on_worker_registered(now, msg.worker_id, msg.task_addr, msg.client_addr))
        elif t is rm.Unregister:
            proc = self.procs.get(msg.proc_id)
            if proc is not None and proc.kind == "driver":
                self._on_exit(proc)
        elif t is rm.ForceKillWorker:
            proc = self.procs.get(msg.worker_id)
            if proc is not None:
                log.info("killing worker %s: %s", msg.worker_id, msg.reason)
                _signal(proc, signal.SIGKILL)
        elif t is rm.NodesRequest:
            self._send(msg.reply_to, rm.NodesReply(msg.request_id, [self.node_info()]))
        elif t is rm.PeerStatusRequest:
            self._send(msg.reply_to, rm.PeerStatusReply(msg.request_id, self.status()))

    def _on_register_client(self, sender: str, msg: rm.RegisterClient) -> None:
        proc = self.procs.get(msg.proc_id)
        if proc is None:
            if msg.kind == "worker":
                return  # only workers this peer started may register as such
            proc = _Proc(msg.proc_id, "driver")
            proc.pid = msg.pid
            proc.pidfd = self._watch_pid(msg.pid)
            if proc.pidfd >= 0:
                self._by_pidfd[proc.pidfd] = proc
            self.procs[msg.proc_id] = proc
        proc.addr = msg.addr
        proc.job_id = msg.job_id
        proc.job_env = msg.job_env if isinstance(msg.job_env, dict) else {}
        self._send(msg.addr, rm.ClientRegistered(self.peer_id, self.addr, self.store_dir, self.total,
                                                 {"inline_max_bytes": 100 * 1024}))

    # ---- effects ------------------------------------------------------------------------------------

    def _send(self, to: str, msg) -> None:
        try:
            self.transport.send(to, codec.encode(msg))
        except ValueError as exc:
            log.warning("cannot send %s to %s: %s", type(msg).__name__, to, exc)

    def _run(self, effects: list) -> None:
        for eff in effects:
            t = type(eff)
            if t is Send:
                self._send(eff.to, eff.msg)
            elif t is Timer:
                self._deadline_ns = min(self._deadline_ns, eff.at_ns)
            elif t is StartWorker:
                self._start_worker(eff)
            elif t is StopWorker:
                self._stop_worker(eff.worker_id, eff.reason)
            elif t is Infeasible:
                self._send(eff.holder_addr, rm.Warning_(
                    f"a task or actor asks for {resources.describe(eff.shape)}, but no peer has that much "
                    f"(the most any peer has: {resources.describe(eff.cluster_total)}). It will wait until a "
                    f"peer that fits joins; get(timeout=...) bounds the wait."))

    def _stop_worker(self, worker_id: str, reason: str) -> None:
        proc = self.procs.get(worker_id)
        if proc is None:
            return
        log.info("stopping worker %s: %s", worker_id, reason)
        _signal(proc, signal.SIGTERM)
        proc.stop_deadline = time.monotonic() + 2.0

    # ---- reports ------------------------------------------------------------------------------------

    def node_info(self) -> dict:
        return {"NodeID": self.peer_id, "Alive": True, "State": "alive", "Address": self.addr,
                "Resources": resources.to_user(self.lease.total),
                "Available": resources.to_user(self.lease.available),
                "StoreUsed": self.store_used, "Workers": len(self.lease.workers),
                "PendingDemand": self.lease.pending_demand()}

    def status(self) -> dict:
        return {"peer_id": self.peer_id, "address": self.addr, "pid": os.getpid(),
                "uptime_s": round(time.time() - self.started_at, 1), "nodes": [self.node_info()],
                "processes": [{"id": p.proc_id, "kind": p.kind, "pid": p.pid} for p in self.procs.values()],
                "workers": [{"id": w.worker_id, "state": w.state, "lease": w.lease_id, "job": w.job_id,
                             "blocked": w.blocked} for w in self.lease.workers.values()],
                "leases": [{"id": l.lease_id, "holder": l.request.holder_id, "worker": l.worker_id,
                            "shape": l.shape} for l in self.lease.leases.values()],
                "waiting": self.lease.pending_demand()}

    # ---- shutdown -----------------------------------------------------------------------------------

    def shutdown(self) -> None:
        workers = [p for p in self.procs.values() if p.kind == "worker"]
        for proc in workers:
            _signal(proc, signal.SIGTERM)
        deadline = time.monotonic() + 2.0
        for proc in workers:
            _wait_gone(proc, deadline)
        if self._zygote is not None:
            try:
                self._zygote.stdin.close()
                self._zygote.wait(2.0)
            except (OSError, subprocess.TimeoutExpired):
                self._zygote.kill()
        remove_store_dir(self.store_dir)
        self.transport.close()
        self.ctx.close()
        if self.parent_pid:
            # Embedded in a driver that is gone: nobody will come back for the sockets or logs.
            import shutil
            shutil.rmtree(self.session_dir, ignore_errors=True)


def _signal(proc: _Proc, sig: int) -> None:
    try:
        if proc.popen is not None:
            proc.popen.send_signal(sig)
        elif proc.pid and proc.kind == "worker":
            os.kill(proc.pid, sig)
    except (OSError, ProcessLookupError):
        pass


def _wait_gone(proc: _Proc, deadline: float) -> None:
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
        time.sleep(0.01)  # a worker of the fork server: not our child, so poll its pid until the deadline
    try:
        os.kill(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}"
    return f"exited with code {code}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="p2pcompute-peer")
    parser.add_argument("--peer-id", required=True)
    parser.add_argument("--session-dir", required=True)
    parser.add_argument("--store-dir", required=True)
    parser.add_argument("--resources", default="{}", help="JSON dict of resource units")
    parser.add_argument("--parent-pid", type=int, default=0)
    parser.add_argument("--prestart", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("P2P_LOG_LEVEL", "WARNING"),
                        format="%(asctime)s peer %(levelname)s %(name)s: %(message)s")
    total = {k: int(v) for k, v in json.loads(args.resources).items()}
    daemon = PeerDaemon(peer_id=args.peer_id, session_dir=args.session_dir, store_dir=args.store_dir, total=total,
                        parent_pid=args.parent_pid, prestart=args.prestart)
    signal.signal(signal.SIGTERM, lambda *_: daemon.stop())
    signal.signal(signal.SIGINT, lambda *_: daemon.stop())
    daemon.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
