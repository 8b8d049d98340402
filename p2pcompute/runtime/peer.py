"""The peer daemon: one per machine (or per `--home`), running the peer-side cores for real.

It owns the local worker processes and the shared-memory store, and drives the lease core and — in a
cluster — the membership core with real time and ZeroMQ. It never runs user code.

The loop: poll sockets, process fds and the wake-up fd; decode each frame (a bad frame is logged and
dropped, never fatal); hand it to the core that owns its type; carry out the effects. Deaths are relayed:
a local process that dies is announced to local clients and to every other peer; a peer that membership
declares dead is announced to local clients, which then know every process of that peer is gone (process
ids start with their peer's id).
"""

from __future__ import annotations

import logging
import os
import random
from collections import deque
import shutil
import time

from p2pcompute.config import system_config
from p2pcompute.errors import RemoteProtocolError
from p2pcompute.lease import messages as lm
from p2pcompute.lease import resources
from p2pcompute.lease.core import Infeasible, LeaseCore, StartWorker, StopWorker
from p2pcompute.lease.policy import PeerView
from p2pcompute.net import codec
from p2pcompute.net.effects import EffectRunner
from p2pcompute.net.messages import BLOBS
from p2pcompute.net.membership import Fenced, Membership, MembershipConfig, MemberChanged
from p2pcompute.net.transport import Context, CurveKeys, Transport, Waker, machine_id
from p2pcompute.ownership import messages as om
from p2pcompute.ownership.store import LocalStore, remove_store_dir
from p2pcompute.runtime import gpus
from p2pcompute.runtime import messages as rm
from p2pcompute.runtime.gpus import GpuAssigner
from p2pcompute.runtime.memory import MemoryReports
from p2pcompute.runtime.state_reports import StateReports
from p2pcompute.runtime.processes import Processes, child_env, exit_reason
from p2pcompute.runtime.store_manager import StoreManager, default_capacity
from p2pcompute.runtime.table_service import TableService
from p2pcompute.runtime.transfers import TransferServer

log = logging.getLogger("p2pcompute.peer")

_TICK_NS = 50_000_000
_VIEW_EVERY_NS = 100_000_000


class PeerDaemon:
    def __init__(self, *, peer_id: str, session_dir: str, store_dir: str, total: dict, parent_pid: int = 0,
                 tcp_host: str | None = None, tcp_port: int = 0, advertise_host: str | None = None,
                 token: str | None = None, seeds: list[str] | None = None, prestart: int | None = None,
                 membership_config: MembershipConfig | None = None, log_dir: str | None = None,
                 store_capacity: int | None = None):
        self.peer_id = peer_id
        self.session_dir = session_dir
        self.store_dir = store_dir
        self.store = LocalStore(store_dir)
        self.tcp_host = tcp_host
        self.advertise_host = advertise_host
        self.clustered = tcp_host is not None
        self.ctx = Context(CurveKeys.from_token(token) if token and tcp_host else None, io_threads=2)
        self.transport = Transport(self.ctx, peer_id, "p", ipc_path=os.path.join(session_dir, "peer"),
                                   tcp_host=tcp_host, tcp_port=tcp_port, advertise_host=advertise_host)
        self.addr = self.transport.address
        self.waker = Waker()
        self.transport.add_fd(self.waker.fd)
        self.total = dict(total)
        cfg = system_config()  # p2pcompute/config.py: --config FILE, init(_system_config=...), P2P_* variables
        self.lease = LeaseCore(peer_id, self.addr, total, config=cfg.lease,
                               rng=random.Random())  # its own spill sampling
        # GPU ids for GPU leases (see runtime/gpus.py); the ids are this peer's CUDA_VISIBLE_DEVICES if set.
        self.gpus = GpuAssigner(total.get(resources.GPU, 0), session_dir, os.environ.get("CUDA_VISIBLE_DEVICES"))
        self.log_dir = log_dir or os.path.join(session_dir, "logs")
        os.makedirs(self.log_dir, exist_ok=True)
        self.processes = Processes(self.transport, self.log_dir, child_env(token if tcp_host else None),
                                   self._on_exit)
        self.transfers = TransferServer(self)
        self.memory = MemoryReports(self)
        self.state_reports = StateReports(self)
        self.dashboard = None  # the HTTP dashboard thread, if this peer serves one (see p2pcompute.dashboard)
        self.objects = StoreManager(self.store, store_capacity or default_capacity())
        self.parent_pid = parent_pid
        self._parent_fd = -1
        self._running = True
        self._leaving = False
        self.fenced_reason = ""  # set when the cluster declared this peer dead: it then exits (see _on_fenced)
        self._inbox: deque = deque()
        self._next_rejoin_ns = time.monotonic_ns() + 30_000_000_000
        self._seeds: list[str] = []
        self.keeper_id = ""
        self.keeper_addr = ""
        self._keeper_waiters: list = []
        self._keeper_popen = None
        self._deadline_ns = 0
        self._effects = EffectRunner(self._send_effect, self.wake_at, {
            MemberChanged: self._on_member_changed, Fenced: self._on_fenced, StartWorker: self._start_worker,
            StopWorker: self._stop_worker, Infeasible: self._warn_infeasible})
        self._next_view_ns = 0
        self._last_view: dict | None = None
        self.started_at = time.time()
        now = time.monotonic_ns()
        self.membership: Membership | None = None
        if self.clustered:
            meta = {"machine": machine_id(), "store": store_dir, "pid": os.getpid(), "version": 1}
            self.membership = Membership(peer_id, self.addr, config=membership_config or cfg.membership,
                                         rng=random.Random(), now_ns=now, meta=meta)
            self._seeds = list(seeds or [])
        # The first peer of a cluster (and an embedded peer) starts the table; others are added by its leader.
        self.table = TableService(self, now, bootstrap=not seeds)
        if parent_pid:
            self._parent_fd = self.processes.watch_pid(parent_pid)
            if self._parent_fd < 0:
                raise SystemExit("the process that started this embedded peer is already gone")
        if self.membership is not None:
            self.membership.set_view(self._view())
            self._run(self.membership.start(now, self._seeds))
        count = prestart if prestart is not None else self.lease.pool_size
        self._run(self.lease.prestart(now, count))

    @staticmethod
    def now() -> int:
        return time.monotonic_ns()

    # ---- local processes ----------------------------------------------------------------------------

    def _start_worker(self, eff: StartWorker) -> None:
        argv = ["--peer", self.addr, "--worker-id", eff.worker_id, "--node-id", self.peer_id,
                "--sock-dir", self.session_dir]
        gpu_ids = self.gpus.on_start_worker(eff.worker_id, eff.job_id)
        if gpu_ids:
            argv += ["--gpu-ids", ",".join(gpu_ids)]
        if self.tcp_host:
            argv += ["--tcp-host", self.tcp_host]
            if self.advertise_host:
                argv += ["--advertise-host", self.advertise_host]
        if self.processes.start_worker(eff.worker_id, eff.job_id, argv) is None:
            self._run(self.lease.on_worker_died(time.monotonic_ns(), eff.worker_id, "failed to start"))

    def _on_exit(self, proc, code: int | None) -> None:
        """A local process ended: free what it held and tell everyone who cares."""
        reason = exit_reason(code)
        if code is not None and code not in (0, -15, -9):
            reason += f"; its output is in {proc.log_path}"
        log.info("%s %s (pid %d) %s", proc.kind, proc.proc_id, proc.pid, reason)
        now = time.monotonic_ns()
        effects = []
        if proc.kind == "worker":
            self.gpus.on_worker_exit(proc.proc_id)
            effects += self.lease.on_worker_died(now, proc.proc_id, reason)
        effects += self.lease.on_process_died(now, proc.proc_id)
        self._run(effects)
        self.table.on_process_died(now, proc.proc_id, proc.kind, proc.job_id, clean=code == 0)
        self._free_owned_by(lambda owner: owner == proc.proc_id)
        died = rm.ProcessDied(proc.proc_id, proc.kind, reason, proc.addr, proc.task_addr)
        self._tell_locals(died)
        for peer in self.other_peers():
            self._send(peer.addr, died)
        for addr in (proc.addr, proc.task_addr):
            if addr:
                self.transport.forget(addr)

    def proc_at(self, addr: str) -> str:
        for proc in self.processes.procs.values():
            if proc.addr == addr:
                return proc.proc_id
        return ""

    def dead_peer_at(self, addr: str) -> str | None:
        """The id of the dead (or departed) peer at `addr`, if membership says so."""
        if self.membership is None:
            return None
        for member in self.membership.members().values():
            if member.addr == addr and member.state in ("dead", "left"):
                return member.peer_id
        return None

    def _tell_locals(self, msg) -> None:
        data = codec.encode(msg)
        for other in self.processes.procs.values():
            if other.addr:
                self.transport.send(other.addr, data)

    def other_peers(self) -> list:
        if self.membership is None:
            return []
        return [m for m in self.membership.alive() if m.peer_id != self.peer_id]

    # ---- the loop -----------------------------------------------------------------------------------

    def stop(self) -> None:
        self._running = False
        self.waker.wake()

    def leave(self) -> None:
        """Leave the cluster gracefully: announce it, so no one waits for a failure timeout."""
        if self.membership is not None and not self._leaving:
            self._leaving = True
            self._run(self.membership.leave(time.monotonic_ns()))
        self.stop()

    def serve(self) -> None:
        try:
            while self._running:
                delta_ms = 0.0 if self._inbox else max(0.0, (self._deadline_ns - time.monotonic_ns()) / 1e6)
                frames, fds, events = self.transport.poll(min(delta_ms, 100.0))
                for fd in fds:
                    if fd == self.waker.fd:
                        self.waker.clear()
                    elif fd == self._parent_fd:
                        log.info("the driver that embedded this peer exited; shutting down")
                        self._running = False
                    else:
                        self.processes.on_fd(fd)
                for sender, data in frames:
                    self._on_frame(sender, data)
                while self._inbox:
                    self._handle(self.peer_id, self._inbox.popleft())
                for ev in events:
                    self._on_unreachable(ev)
                now = time.monotonic_ns()
                if now >= self._deadline_ns:
                    self._tick(now)
        finally:
            self.shutdown()
        if self.fenced_reason:
            raise SystemExit(self.fenced_reason)  # a non-zero exit, with the cause, for whoever started us

    def _on_unreachable(self, ev) -> None:
        known = any(ev.address in (p.addr, p.task_addr) for p in self.processes.procs.values())
        if self.membership is not None:
            known = known or any(m.addr == ev.address for m in self.membership.alive())
        # Short-lived callers (p2p status, a finished driver) vanish without a goodbye: only say something
        # about processes we still believe alive.
        (log.warning if known else log.debug)("cannot reach %s: %s (%d messages dropped)", ev.address,
                                              ev.reason, ev.dropped)

    def _rejoin_if_cut_off(self, now: int) -> None:
        """A partition longer than membership remembers dead peers is not healed by gossip: ask the seeds
        we started from again, every so often, while any of them is not alive to us."""
        if now < self._next_rejoin_ns or not self._seeds:
            return
        self._next_rejoin_ns = now + 30_000_000_000
        alive_addrs = " ".join(m.addr for m in self.membership.alive())
        if any(seed not in alive_addrs for seed in self._seeds):
            self._run(self.membership.start(now, self._seeds))

    def _tick(self, now: int) -> None:
        self._deadline_ns = now + _TICK_NS
        if self.membership is not None:
            self._run(self.membership.on_tick(now))
            self._rejoin_if_cut_off(now)
            if now >= self._next_view_ns:
                self._next_view_ns = now + _VIEW_EVERY_NS
                view = self._view()
                if view != self._last_view:
                    self._last_view = view
                    self.membership.set_view(view)
                self.lease.set_views(self._peer_views())
        self._run(self.lease.on_tick(now))
        self.processes.on_tick()
        self.transfers.on_tick(now)
        self.objects.on_tick()  # pooled store files unused for a while go back to the system
        self.memory.on_tick()
        self.state_reports.on_tick()
        if self.membership is None:
            self.table.on_tick(now, {self.peer_id: self.addr}, [])
        else:
            members = self.membership.alive()
            self.table.on_tick(now, {m.peer_id: m.addr for m in members},
                               [m.view for m in members if m.peer_id != self.peer_id and m.view])

    def _view(self) -> dict:
        view = {"total": dict(self.lease.total), "available": dict(self.lease.available),
                "queued": len(self.lease.waiting), "store_used": self.objects.used,
                "store_capacity": self.objects.capacity, "spilled": self.objects.spilled_bytes,
                "workers": len(self.lease.workers), "pending": self.lease.pending_demand()[:8]}
        table = self.table.view_info() if hasattr(self, "table") else None
        if table is not None:
            view["table"] = table
        return view

    def _peer_views(self) -> list[PeerView]:
        out = []
        for m in self.membership.alive():
            if m.peer_id == self.peer_id or not m.view:
                continue
            v = m.view
            total, available = v.get("total"), v.get("available")
            if isinstance(total, dict) and isinstance(available, dict):
                out.append(PeerView(m.peer_id, m.addr, total, available, int(v.get("queued", 0) or 0)))
        return out

    def _on_frame(self, sender: str, data) -> None:
        try:
            msg = codec.decode(data)
        except RemoteProtocolError as exc:
            log.warning("dropped a bad frame from %s: %s", sender, exc)
            return
        self._handle(sender, msg)

    def _handle(self, sender: str, msg) -> None:
        try:
            self._dispatch(sender, msg)
        except Exception:
            log.exception("error while handling %s from %s", type(msg).__name__, sender)

    def _sender_addr(self, sender: str) -> str | None:
        if sender == self.peer_id:
            return self.addr
        addr = self.transport.reply_addr.get(sender)
        if addr is None and self.membership is not None:
            member = self.membership.members().get(sender)
            addr = member.addr if member is not None else None
        return addr

    def _dispatch(self, sender: str, msg) -> None:
        now = time.monotonic_ns()
        t = type(msg)
        code = t.TYPE
        if code < 100:
            if self.membership is not None:
                addr = self._sender_addr(sender) or getattr(msg, "src_addr", None)
                if addr is not None:
                    self._run(self.membership.on_message(now, addr, msg))
        elif t in (lm.RequestLease, lm.ReturnLease, lm.CancelLeaseRequest, lm.WorkerBlocked, lm.WorkerUnblocked):
            if t is lm.RequestLease:
                msg = gpus.tag_request(msg)  # a GPU request gets a worker of its own
            effects = self.lease.on_message(now, sender, msg)
            if t is lm.ReturnLease:
                self._stop_gpu_worker(msg.lease_id)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s from %s -> %s", msg, sender, effects)
            self._run(effects)
        elif t is om.ObjectSealed:
            if _valid_object_id(msg.object_id):
                self.objects.sealed(msg.object_id, msg.size)
                self.objects.maybe_spill()
        elif t is om.FreeObjects:
            for oid in msg.object_ids:
                self._free(oid)
        elif t in self.transfers.handles:
            self.transfers.dispatch(sender, msg)
        elif t in self.memory.handles:
            self.memory.dispatch(sender, msg)
        elif t in self.state_reports.handles:
            self.state_reports.dispatch(sender, msg)
        elif t in self.table.handles:
            self.table.dispatch(now, self._sender_addr(sender), msg)
        elif t is rm.RegisterClient:
            self._on_register_client(sender, msg)
        elif t is rm.RegisterWorker:
            proc = self.processes.procs.get(msg.worker_id)
            if proc is None:
                self.transport.send(msg.task_addr, codec.encode(rm.StopProcess("unknown worker")))
                return
            proc.task_addr = msg.task_addr
            proc.addr = proc.addr or msg.client_addr
            self._run(self.lease.on_worker_registered(now, msg.worker_id, msg.task_addr, msg.client_addr))
        elif t is rm.Unregister:
            proc = self.processes.procs.get(msg.proc_id)
            if proc is not None and proc.kind == "driver":
                self.processes.reaped(proc, 0)
        elif t is rm.ProcessDied:
            # A process on another peer died: reclaim what it leased here, and tell our clients.
            if msg.proc_id not in self.processes.procs:
                self._run(self.lease.on_process_died(now, msg.proc_id))
                self._free_owned_by(lambda owner: owner == msg.proc_id)
                self._tell_locals(msg)
                for addr in (msg.addr, msg.task_addr):
                    if addr:
                        self.transport.forget(addr)
        elif t is rm.ForceKillWorker:
            proc = self.processes.procs.get(msg.worker_id)
            if proc is not None:
                log.info("killing worker %s: %s", msg.worker_id, msg.reason)
                self.processes.signal(proc, 9)
        elif t is rm.NodesRequest:
            self._send(msg.reply_to, rm.NodesReply(msg.request_id, self.nodes()))
        elif t is rm.PeerStatusRequest:
            self._send(msg.reply_to, rm.PeerStatusReply(msg.request_id, self.status()))
        elif t is rm.KeeperRequest:
            self._keeper_request(msg)
        elif t is rm.KeeperAddress:
            self.keeper_addr = msg.addr
            for request_id, reply_to in self._keeper_waiters:
                self._send(reply_to, rm.KeeperAddress(request_id, msg.addr))
            self._keeper_waiters = []
        elif t is rm.StopPeer:
            self._send(msg.reply_to, rm.PeerStatusReply(msg.request_id, {"stopping": True}))
            self.leave()

    def keeper_address(self) -> str:
        """This peer's keeper of detached actors (the table service restarts actors of dead peers through
        it): its address, or "" while it is starting, which this call begins if needed."""
        keeper = self.processes.procs.get(self.keeper_id) if self.keeper_id else None
        if keeper is not None and self.keeper_addr:
            return self.keeper_addr
        if self._keeper_popen is None or self._keeper_popen.poll() is not None:
            self._keeper_request(rm.KeeperRequest("table", self.addr))
        return ""

    def _keeper_request(self, msg: rm.KeeperRequest) -> None:
        keeper = self.processes.procs.get(self.keeper_id) if self.keeper_id else None
        if keeper is not None and self.keeper_addr:
            self._send(msg.reply_to, rm.KeeperAddress(msg.request_id, self.keeper_addr))
            return
        self._keeper_waiters.append((msg.request_id, msg.reply_to))
        if self._keeper_popen is not None and self._keeper_popen.poll() is None:
            return  # starting
        import subprocess
        import sys
        argv = [sys.executable, "-m", "p2pcompute.runtime.keeper", "--peer", self.addr, "--peer-id", self.peer_id,
                "--sock-dir", self.session_dir]
        if self.tcp_host:
            argv += ["--tcp-host", self.tcp_host] + (["--advertise-host", self.advertise_host]
                                                      if self.advertise_host else [])
        with open(os.path.join(self.log_dir, "keeper.log"), "ab") as out:
            self._keeper_popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                                  env=self.processes.env, close_fds=True)
        self.keeper_id = f"{self.peer_id}-k{self._keeper_popen.pid}"
        self.keeper_addr = ""

    def _free_owned_by(self, dead) -> None:
        """Objects whose owner died can never be read again (their metadata died with it): free them."""
        for oid in list(self.objects.in_memory) + list(self.objects.spilled):
            if dead(oid.split(".", 1)[0]):
                self.objects.free(oid)

    def _free(self, oid) -> None:
        if _valid_object_id(oid):
            self.objects.free(oid)

    def _on_register_client(self, sender: str, msg: rm.RegisterClient) -> None:
        proc = self.processes.procs.get(msg.proc_id)
        if proc is None:
            if msg.kind == "worker":
                return  # only workers this peer started may register as such
            proc = self.processes.add_driver(msg.proc_id, msg.pid)
        proc.addr = msg.addr
        proc.job_id = msg.job_id
        proc.job_env = msg.job_env if isinstance(msg.job_env, dict) else {}
        self._send(msg.addr, rm.ClientRegistered(self.peer_id, self.addr, self.store_dir, self.total,
                                                 {"machine": machine_id(),
                                                  "alive_peers": len(self.other_peers()) + 1}))

    # ---- effects ------------------------------------------------------------------------------------

    def _send(self, to: str, msg) -> None:
        if to == self.addr:
            self._inbox.append(msg)  # to ourselves (our table replica and client talk): no socket needed
            return
        try:
            if type(msg) in BLOBS:
                self.transport.send_frames(to, codec.encode_frames(msg))
            else:
                self.transport.send(to, codec.encode(msg))
        except ValueError as exc:
            log.warning("cannot send %s to %s: %s", type(msg).__name__, to, exc)

    def _run(self, effects: list) -> None:
        if effects:
            self.state_reports.count_lease(effects)
            self._effects.run(effects)

    send = _send  # deliver a message to the process at an address (this peer's own included)

    def wake_at(self, at_ns: int) -> None:
        """Tick the peer's cores at or after `at_ns`."""
        if at_ns < self._deadline_ns:
            self._deadline_ns = at_ns

    def _send_effect(self, to: str, msg) -> None:
        if type(msg) is lm.LeaseGranted and self.gpus.ids:
            self._on_gpu_grant(msg)
        self._send(to, msg)

    def _stop_worker(self, eff: StopWorker) -> None:
        proc = self.processes.procs.get(eff.worker_id)
        if proc is not None:
            log.info("stopping worker %s: %s", eff.worker_id, eff.reason)
            self.processes.stop(proc)

    def _warn_infeasible(self, eff: Infeasible) -> None:
        self._send(eff.holder_addr, rm.Warning_(
            f"a task or actor asks for {resources.describe(eff.shape)}, but no peer has that much "
            f"(the most any peer has: {resources.describe(eff.cluster_total)}). It will wait until a "
            f"peer that fits joins; get(timeout=...) bounds the wait."))

    def _on_gpu_grant(self, grant) -> None:
        lease = self.lease.leases.get(grant.lease_id)
        if lease is not None:
            self.gpus.on_granted(grant.lease_id, grant.worker_id, lease.shape)

    def _stop_gpu_worker(self, lease_id: str) -> None:
        """A GPU lease ended: its worker goes (as Ray's GPU workers do), releasing the GPU's memory."""
        worker_id = self.gpus.on_lease_returned(lease_id)
        proc = self.processes.procs.get(worker_id) if worker_id else None
        if proc is not None:
            self.processes.stop(proc)

    def _on_fenced(self, eff: Fenced) -> None:
        """The cluster declared this peer dead (a pause or partition outlasted the suspicion timeout) and
        acted on it: our leases were reclaimed, our processes' borrows written off. Deaths are final, so we do
        not come back under this id: tell our clients, so their calls fail at once with the cause, and exit."""
        self.fenced_reason = (
            f"this peer ({self.peer_id}) was declared dead by the cluster ({eff.reason}), most likely after a "
            f"pause or network partition longer than the suspicion timeout; its processes' objects and leases "
            f"are gone for the cluster, so it stops; restart it with p2p join (it comes back as a new peer)")
        log.error("%s", self.fenced_reason)
        self._tell_locals(rm.ProcessDied(self.peer_id, "peer", self.fenced_reason, self.addr, ""))
        self._leaving = True  # so that shutdown lingers for that message to go out
        self.stop()

    def _on_member_changed(self, eff: MemberChanged) -> None:
        log.info("peer %s at %s: %s -> %s", eff.peer_id, eff.addr, eff.previous_state, eff.state)
        self.state_reports.count(f"membership:{eff.state}")
        if eff.state in ("dead", "left") and eff.peer_id != self.peer_id:
            now = time.monotonic_ns()
            self._run(self.lease.on_peer_died(now, eff.peer_id))
            self.lease.set_views(self._peer_views())
            self._tell_locals(rm.ProcessDied(eff.peer_id, "peer", f"peer {eff.state}", eff.addr, ""))
            self.table.on_peer_died(now, eff.peer_id)
            prefix = eff.peer_id + "-"
            self._free_owned_by(lambda owner: owner.startswith(prefix))
            self.transfers.on_peer_died(eff.peer_id, eff.addr)
            self.transport.forget(eff.addr)
        elif eff.state in ("alive", "suspect"):
            # Whatever came before (dead, a forgotten dead record, nothing): it is not dead now.
            self._run(self.lease.on_peer_alive(time.monotonic_ns(), eff.peer_id))
            if eff.state == "alive":
                self.lease.set_views(self._peer_views())
                if eff.previous_state in (None, "dead", "left") and self.transport.reconnect_now(eff.addr):
                    log.info("peer %s is new at %s: reconnecting there at once", eff.peer_id, eff.addr)
        self._tell_locals(rm.ClusterInfo(len(self.other_peers()) + 1))

    # ---- reports ------------------------------------------------------------------------------------

    def node_info(self) -> dict:
        return {"NodeID": self.peer_id, "Alive": True, "State": "alive", "Address": self.addr,
                "Resources": resources.to_user(self.lease.total),
                "Available": resources.to_user(self.lease.available),
                "Queued": len(self.lease.waiting), "StoreUsed": self.objects.used,
                "StoreCapacity": self.objects.capacity, "Spilled": self.objects.spilled_bytes,
                "Workers": len(self.lease.workers), "PendingDemand": self.lease.pending_demand(),
                "LastHeardS": 0.0, "Self": True}

    def nodes(self) -> list[dict]:
        if self.membership is None:
            return [self.node_info()]
        now = time.monotonic_ns()
        out = []
        for m in self.membership.members().values():
            if m.peer_id == self.peer_id:
                out.append(self.node_info())
                continue
            v = m.view or {}
            total = v.get("total") if isinstance(v.get("total"), dict) else {}
            avail = v.get("available") if isinstance(v.get("available"), dict) else {}
            out.append({"NodeID": m.peer_id, "Alive": m.state in ("alive", "suspect"), "State": m.state,
                        "Address": m.addr, "Resources": resources.to_user(total),
                        "Available": resources.to_user(avail), "Queued": v.get("queued", 0),
                        "StoreUsed": v.get("store_used", 0), "StoreCapacity": v.get("store_capacity", 0),
                        "Spilled": v.get("spilled", 0), "Workers": v.get("workers", 0),
                        "PendingDemand": v.get("pending", []),
                        "LastHeardS": round((now - m.last_heard_ns) / 1e9, 2) if m.last_heard_ns else None})
        return sorted(out, key=lambda n: n["NodeID"])

    def status(self) -> dict:
        return {"peer_id": self.peer_id, "address": self.addr, "pid": os.getpid(),
                "uptime_s": round(time.time() - self.started_at, 1), "nodes": self.nodes(),
                "processes": [{"id": p.proc_id, "kind": p.kind, "pid": p.pid}
                              for p in self.processes.procs.values()],
                "workers": [{"id": w.worker_id, "state": w.state, "lease": w.lease_id, "job": w.job_id,
                             "blocked": w.blocked} for w in self.lease.workers.values()],
                "leases": [{"id": l.lease_id, "holder": l.request.holder_id, "worker": l.worker_id,
                            "shape": l.shape} for l in self.lease.leases.values()],
                "waiting": self.lease.pending_demand(), "table": self.table.status(),
                "dashboard": self.dashboard.url if self.dashboard is not None else None,
                "jobs": [record for _job, record in self.table.client.cache.read(("job_list",))[1] or []]
                if self.table.client.cache_usable(time.monotonic_ns()) else []}

    # ---- shutdown -----------------------------------------------------------------------------------

    def shutdown(self) -> None:
        if self.dashboard is not None:
            self.dashboard.stop()
        if self._keeper_popen is not None and self._keeper_popen.poll() is None:
            self._keeper_popen.terminate()
        self.processes.shutdown()
        remove_store_dir(self.store_dir)
        # A leaving peer lets its goodbye go out before the sockets close.
        self.transport.close(linger_ms=500 if self._leaving else 0)
        self.ctx.close()
        if self.parent_pid:
            # Embedded in a driver that is gone: nobody will come back for the sockets or logs.
            shutil.rmtree(self.session_dir, ignore_errors=True)


def _valid_object_id(oid) -> bool:
    """Object ids name files in the store: never a path, never hidden."""
    return isinstance(oid, str) and 0 < len(oid) < 200 and "/" not in oid and not oid.startswith(".")
