"""Runtime messages: registration, process lifecycle, logs (400-499); task execution (500-599).

Append-only: never reuse or renumber a code.
"""

from __future__ import annotations

from typing import Any

from p2pcompute.net.messages import message
# Task and actor messages spoken by the owner's cores live next to them; re-exported here for the runtime.
from p2pcompute.ownership.task_messages import (ActorLocation, CancelTask, ClusterInfo, ForceKillWorker,  # noqa: F401
                                                KillActor, ProcessDied, PushTask, ResolveActor, StealTasks,
                                                TaskReply, TasksBounced)


@message(400)
class RegisterClient:
    """Driver or worker client -> its local peer: I exist at `addr`; here is my job."""

    proc_id: str
    kind: str          # "driver" | "worker"
    addr: str
    pid: int
    job_id: str
    job_env: dict      # {"sys_path": [...], "cwd": str} for drivers


@message(401)
class ClientRegistered:
    peer_id: str
    peer_addr: str
    store_dir: str
    total: dict
    config: dict


@message(402)
class RegisterWorker:
    """Worker -> its peer: started; tasks go to `task_addr`, everything else to `client_addr`."""

    worker_id: str
    pid: int
    task_addr: str
    client_addr: str


@message(404)
class LogLines:
    """Worker -> the owner of the task that printed: output lines, already prefixed."""

    stream: str        # "stdout" | "stderr"
    lines: list


@message(405)
class StopProcess:
    """Peer -> worker: exit now."""

    reason: str


@message(406)
class NodesRequest:
    reply_to: str
    request_id: str


@message(407)
class NodesReply:
    request_id: str
    nodes: list        # list of plain dicts, one per peer


@message(409)
class Unregister:
    """Client -> peer: I am leaving cleanly."""

    proc_id: str


@message(411)
class Warning_:
    """Peer -> client: something the user should see (e.g. an infeasible resource request)."""

    text: str


@message(412)
class PeerStatusRequest:
    reply_to: str
    request_id: str


@message(413)
class PeerStatusReply:
    request_id: str
    status: dict


@message(503)
class ActorReady:
    """Actor worker -> owner (via the creation reply path): the constructor finished; calls go to `addr`."""

    actor_id: str
    addr: str


@message(414)
class StopPeer:
    """CLI -> peer: leave the cluster gracefully and stop."""

    reply_to: str
    request_id: str


@message(416)
class TableOp:
    """Client -> its local peer: run `op` on the replicated table (see p2pcompute/table/state.py)."""

    request_id: str
    op: tuple
    linearizable: bool
    reply_to: str


@message(417)
class TableOpReply:
    request_id: str
    ok: bool
    result: Any
    error: str | None


@message(418)
class CreateDetached:
    """Driver -> its peer's keeper: create a detached actor. `spec` is a pickle of (class, args, kwargs,
    options); `job_env` lets the keeper import what the class needs."""

    request_id: str
    reply_to: str
    spec: bytes
    job_env: dict


@message(419)
class DetachedCreated:
    request_id: str
    record: dict | None     # the handle record (actor_id, owner, class, methods, max_task_retries)
    error: bytes | None     # a packed error (see serialization.system_error_bytes / serialize_error)


@message(420)
class KeeperRequest:
    """Driver -> its peer: where is this peer's keeper of detached actors (start it if needed)?"""

    request_id: str
    reply_to: str


@message(421)
class KeeperAddress:
    request_id: str
    addr: str


@message(422)
class MemoryRequest:
    """What objects are held where, and who references them. `cluster`: ask every peer, not just one."""

    request_id: str
    reply_to: str
    cluster: bool


@message(423)
class MemoryReply:
    request_id: str
    peers: list        # one report (plain dict) per peer that answered in time


@message(424)
class RefsRequest:
    """Peer -> local client: your reference table, for a memory report."""

    request_id: str
    reply_to: str


@message(425)
class RefsReply:
    request_id: str
    proc_id: str
    refs: list         # [[object_id, owned, local, pins, borrowers_dict, state, size], ...]



# ---- observability: task events, state reports (470-479; see p2pcompute/runtime/state_reports.py) ----

@message(470)
class TaskEvents:
    """Worker -> its peer: a batch of finished task attempts (one list per attempt, see task_events.py)."""

    worker_id: str
    events: list


@message(471)
class StateRequest:
    """Anyone -> a peer: what its processes know about `what` ("tasks", "actors", "metrics");
    `cluster`: ask every other peer too. `options` narrows it (e.g. {"since_ns": ...})."""

    request_id: str
    reply_to: str
    what: str
    cluster: bool
    options: dict


@message(472)
class StateReply:
    request_id: str
    peers: list        # one report (plain dict) per peer that answered in time


@message(473)
class ProcStateRequest:
    """Peer -> local client: your part of a state report."""

    request_id: str
    reply_to: str
    what: str


@message(474)
class ProcStateReply:
    request_id: str
    proc_id: str
    data: dict
