"""What a client process tells about itself: its references for `p2p memory`, its scheduling state for a
debugging dump. Read racily from any thread: a snapshot, never a consistent cut."""

from __future__ import annotations

from p2pcompute.ownership.directory import ERROR, INLINE, PENDING, STORED

_STATE_NAMES = {PENDING: "pending", INLINE: "inline", STORED: "stored", ERROR: "error"}


def refs_report(rt, limit: int = 2000) -> list:
    """[object id, owned, local refs, pins, borrowers, state, size] for up to `limit` refs this process knows."""
    out = []
    values = rt.objects.values
    for oid in rt.refs.object_ids()[:limit]:
        c = rt.refs.counts(oid)
        if c is None:
            continue
        v = values.get(oid)
        out.append([oid, c["owned"], c["local"], c["pins"] + c["acks"], c["borrowers"],
                    _STATE_NAMES.get(v.state, "?") if v is not None else "unknown", v.size if v is not None else 0])
    return out


def debug_state(rt) -> dict:
    """A snapshot of the process's scheduling state: its tasks, leases and queues."""
    sub = rt.submitter
    return {
        "proc": rt.proc_id, "kind": rt.kind,
        "tasks": {tid: {"name": r.name, "kind": r.kind, "deps_left": r.deps_left, "scheduled": r.scheduled,
                        "worker": r.held.worker_id if r.held else None} for tid, r in list(rt.tasks.items())},
        "leases": [{"lease": h.lease_id, "worker": h.worker_id, "inflight": list(h.inflight),
                    "draining": h.draining, "wanted": h.wanted} for h in sub.held_leases()],
        "queues": {str(k[0]): {"queue": list(st.queue), "requests": list(st.requests)}
                   for k, st in list(sub.keys.items())},
        "ops": len(rt.ops),
    }
