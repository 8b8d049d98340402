"""Lease protocol messages. Type codes 100-199, append-only."""

from __future__ import annotations

from p2pcompute.net.messages import message


@message(100)
class RequestLease:
    """Submitter -> peer: lease me a worker that fits `shape` for tasks of job `job_id`.

    `spilled` is how many hops this request has already taken; a spilled request is never spilled again.
    `strategy` is "DEFAULT" or "SPREAD"; `affinity` names a peer id for node affinity (`soft` or hard).
    """

    request_id: str
    holder_id: str
    holder_addr: str
    job_id: str
    shape: dict
    spilled: int
    strategy: str
    affinity: str | None
    soft: bool
    actor: bool
    # bytes of the task's arguments held by each peer, for locality-aware spillback
    locality: dict


@message(101)
class LeaseGranted:
    request_id: str
    lease_id: str
    worker_id: str
    worker_addr: str       # where tasks are pushed (the worker's executing thread)
    worker_ctl_addr: str   # where cancels and object requests go (the worker's I/O thread)
    peer_id: str
    peer_addr: str


@message(102)
class LeaseSpillback:
    """Peer -> submitter: I cannot run it now; ask `target_addr` instead (which is told to not spill it).

    `others` names more peers, as `(peer_id, addr)` pairs, to ask at the same time: the submitter takes the
    first that grants and cancels the rest (late binding: gossiped views are too stale to tell which of the
    sampled peers will free a worker first, so the request waits at all of them).
    """

    request_id: str
    target_id: str
    target_addr: str
    others: tuple = ()


@message(103)
class LeaseRejected:
    """Peer -> submitter: the request cannot be served here (`reason` says why); retry at the local peer."""

    request_id: str
    reason: str
    infeasible: bool


@message(104)
class ReturnLease:
    """Holder -> peer: done with this worker. `kill` asks for the worker to be stopped (actor killed)."""

    lease_id: str
    kill: bool


@message(105)
class CancelLeaseRequest:
    request_id: str


@message(106)
class LeaseRevoked:
    """Peer -> holder: the lease is gone (its worker died or was killed)."""

    lease_id: str
    reason: str


@message(107)
class WorkerBlocked:
    """Worker -> its peer: my task waits in `get`; lend my CPU to someone else meanwhile."""

    worker_id: str


@message(108)
class WorkerUnblocked:
    worker_id: str


@message(109)
class LeaseWanted:
    """Peer -> holder: requests are waiting here; return this lease if you hold it idle."""

    lease_id: str
