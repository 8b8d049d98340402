"""Memory reports: which objects each peer holds, who owns them, and who still references them.

A peer asks each of its local processes for its reference table (`RefsRequest`) and, for a cluster-wide
report, every other peer for theirs; it answers with whatever arrived within `WAIT_S` (a dead or stuck
process must not hold the report hostage).
"""

from __future__ import annotations

import time

from p2pcompute.runtime import messages as rm

WAIT_S = 2.0


class _Job:
    __slots__ = ("reply_to", "request_id", "deadline", "waiting_procs", "waiting_peers", "refs", "peers")

    def __init__(self, reply_to: str, request_id: str):
        self.reply_to = reply_to
        self.request_id = request_id
        self.deadline = time.monotonic() + WAIT_S
        self.waiting_procs: set[str] = set()
        self.waiting_peers: set[str] = set()
        self.refs: dict[str, list] = {}
        self.peers: list[dict] = []


class MemoryReports:
    def __init__(self, peer):
        self.peer = peer
        self.jobs: dict[str, _Job] = {}
        self._seq = 0
        self.handles = (rm.MemoryRequest, rm.MemoryReply, rm.RefsReply)

    def dispatch(self, sender: str, msg) -> None:
        t = type(msg)
        if t is rm.MemoryRequest:
            self._start(msg)
        elif t is rm.RefsReply:
            job = self.jobs.get(msg.request_id)
            if job is not None and msg.proc_id in job.waiting_procs:
                job.waiting_procs.discard(msg.proc_id)
                job.refs[msg.proc_id] = msg.refs if isinstance(msg.refs, list) else []
                self._maybe_finish(msg.request_id)
        elif t is rm.MemoryReply:
            job = self.jobs.get(msg.request_id)
            if job is not None and sender in job.waiting_peers:
                job.waiting_peers.discard(sender)
                job.peers.extend(p for p in msg.peers if isinstance(p, dict))
                self._maybe_finish(msg.request_id)

    def _start(self, msg: rm.MemoryRequest) -> None:
        self._seq += 1
        job_id = f"{self.peer.peer_id}-mem{self._seq}"
        job = _Job(msg.reply_to, msg.request_id)
        self.jobs[job_id] = job
        for proc in self.peer.processes.procs.values():
            if proc.addr:
                job.waiting_procs.add(proc.proc_id)
                self.peer.send(proc.addr, rm.RefsRequest(job_id, self.peer.addr))
        if msg.cluster:
            for member in self.peer.other_peers():
                job.waiting_peers.add(member.peer_id)
                self.peer.send(member.addr, rm.MemoryRequest(job_id, self.peer.addr, False))
        self._maybe_finish(job_id)

    def _maybe_finish(self, job_id: str, force: bool = False) -> None:
        job = self.jobs.get(job_id)
        if job is None or (not force and (job.waiting_procs or job.waiting_peers)):
            return
        del self.jobs[job_id]
        report = self._local_report(job)
        self.peer.send(job.reply_to, rm.MemoryReply(job.request_id, [report] + job.peers))

    def _local_report(self, job: _Job) -> dict:
        objects = self.peer.objects
        held = [[oid, size, False] for oid, size in objects.in_memory.items()]
        held += [[oid, size, True] for oid, size in objects.spilled.items()]
        return {"peer": self.peer.peer_id, "store": objects.summary(), "objects": held[:5000],
                "processes": job.refs, "unanswered": sorted(job.waiting_procs)}

    def on_tick(self) -> None:
        now = time.monotonic()
        for job_id, job in list(self.jobs.items()):
            if now > job.deadline:
                self._maybe_finish(job_id, force=True)
