"""The state API, under Ray's names: `list_tasks`, `list_actors`, `list_objects`, `list_nodes`, `list_jobs`,
`summarize_tasks`.

Nothing here reads a central store, because there is none. Each call asks the local peer, which asks its own
processes and every other peer (see `runtime/state_reports.py`); owners report the tasks they wait for,
workers the task they run, peers the attempts their workers finished. This module merges those answers:
for one task id the latest stage wins (a finished attempt over a running one over the owner's "pending"),
except that a failed attempt the owner is retrying shows the owner's state.

Every function works from a driver (after `init`), and the same merging serves `p2p list ...` and the
dashboard through a `source` (anything with `state`, `memory`, `nodes` and `jobs` methods).

Filters follow Ray: a list of `(key, predicate, value)` with predicate "=" or "!=" (values compared as
strings, case-insensitive for `state`), or a plain dict meaning equality.
"""

from __future__ import annotations

from typing import Iterable

from p2pcompute.errors import InvalidArgumentError

DEFAULT_LIMIT = 100
DEFAULT_TIMEOUT_S = 30.0

_KIND_TO_TYPE = {"task": "NORMAL_TASK", "actor_create": "ACTOR_CREATION_TASK", "actor_call": "ACTOR_TASK"}
_RANK = {"PENDING_ARGS_AVAIL": 0, "PENDING_NODE_ASSIGNMENT": 1, "SUBMITTED_TO_WORKER": 2, "RUNNING": 3,
         "FINISHED": 4, "FAILED": 4}
TASK_STATES = tuple(_RANK)


# ---- where the answers come from -----------------------------------------------------------------------

class RuntimeSource:
    """Ask through this process's client runtime (a driver after init, or a worker)."""

    def __init__(self, rt=None):
        from p2pcompute.state import runtime
        self.rt = rt or runtime()

    def state(self, what: str, timeout_s: float, options: dict | None = None) -> list[dict]:
        from p2pcompute.runtime import messages as rm
        rt = self.rt
        reply = rt.peer_request(lambda rid: rm.StateRequest(rid, rt.addr, what, True, options or {}), timeout_s)
        return reply.peers

    def memory(self, timeout_s: float) -> list[dict]:
        from p2pcompute.runtime import messages as rm
        rt = self.rt
        return rt.peer_request(lambda rid: rm.MemoryRequest(rid, rt.addr, True), timeout_s).peers

    def nodes(self, timeout_s: float) -> list[dict]:
        from p2pcompute.runtime import messages as rm
        rt = self.rt
        return rt.peer_request(lambda rid: rm.NodesRequest(rt.addr, rid), timeout_s).nodes

    def jobs(self, timeout_s: float) -> list[dict]:
        return [record for _job_id, record in self.rt.table(("job_list",), timeout_s=timeout_s) or []]


def _source(source):
    return source if source is not None else RuntimeSource()


# ---- filters -------------------------------------------------------------------------------------------

def _check_args(filters, limit) -> list[tuple[str, str, str]]:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InvalidArgumentError(f"limit must be an integer >= 1, not {limit!r}")
    if filters is None:
        return []
    if isinstance(filters, dict):
        return [(str(k), "=", v) for k, v in filters.items()]
    if not isinstance(filters, (list, tuple)):
        raise InvalidArgumentError("filters must be a list of (key, '=' or '!=', value) tuples or a dict")
    out = []
    for f in filters:
        if not isinstance(f, (list, tuple)) or len(f) != 3 or f[1] not in ("=", "!=") or not isinstance(f[0], str):
            raise InvalidArgumentError(f"bad filter {f!r}: use (key, '=' or '!=', value), e.g. ('state', '=', "
                                       f"'RUNNING')")
        out.append((f[0], f[1], f[2]))
    return out


def _matches(row: dict, filters: list) -> bool:
    for key, op, value in filters:
        have = row.get(key)
        if key == "state" or key == "type":
            eq = str(have).upper() == str(value).upper()
        else:
            eq = str(have) == str(value)
        if eq != (op == "="):
            return False
    return True


def _narrowing(filters: list) -> dict:
    """What peers can filter themselves (an equality on the name), so they send only what matters."""
    names = [str(v) for k, op, v in filters if k == "name" and op == "="]
    return {"name": names[0]} if len(names) == 1 else {}


def _apply(rows: Iterable[dict], filters: list, limit: int) -> list[dict]:
    out = []
    for row in rows:
        if _matches(row, filters):
            out.append(row)
            if len(out) >= limit:
                break
    return out


# ---- tasks ---------------------------------------------------------------------------------------------

def _task_row(rec: dict, state: str, node_id: str | None) -> dict:
    start, end = rec.get("start_ns") or 0, rec.get("end_ns") or 0
    return {"task_id": rec.get("task_id"), "name": rec.get("name"), "state": state,
            "type": _KIND_TO_TYPE.get(rec.get("kind"), "NORMAL_TASK"), "job_id": rec.get("job_id"),
            "node_id": node_id, "worker_id": rec.get("worker_id"), "actor_id": rec.get("actor_id"),
            "owner": rec.get("owner"), "pid": rec.get("pid"),
            "start_time_ms": start // 1_000_000 if start else None,
            "end_time_ms": end // 1_000_000 if end else None,
            "duration_ms": round((end - start) / 1e6, 3) if start and end else None,
            "error_type": rec.get("error_type"), "error_message": rec.get("error")}


def merge_tasks(peers: list[dict]) -> list[dict]:
    """One row per task id from the peers' reports; see the module docstring for which answer wins."""
    worker_rows: dict[str, dict] = {}
    owner_rows: dict[str, dict] = {}

    def offer(row: dict, start_ns: int) -> None:
        row["_start"] = start_ns
        old = worker_rows.get(row["task_id"])
        if old is None or (start_ns, _RANK[row["state"]]) >= (old["_start"], _RANK[old["state"]]):
            worker_rows[row["task_id"]] = row

    for peer in peers:
        node = peer.get("peer")
        for ev in peer.get("events", ()):
            offer(_task_row(ev, ev.get("state", "FINISHED"), node), ev.get("start_ns") or 0)
        for proc_id, data in (peer.get("processes") or {}).items():
            for rec in data.get("running", ()):
                offer(_task_row(rec, "RUNNING", node), rec.get("start_ns") or 0)
            for rec in data.get("finished", ()):   # over, not yet handed to the peer's history
                offer(_task_row(rec, rec.get("state", "FINISHED"), node), rec.get("start_ns") or 0)
            for rec in data.get("queued", ()):
                if rec.get("task_id") not in worker_rows:
                    row = _task_row(dict(rec, worker_id=proc_id), "SUBMITTED_TO_WORKER", node)
                    row["_start"] = 0
                    worker_rows[rec["task_id"]] = row
            for rec in data.get("owned", ()):
                owner_rows[rec["task_id"]] = _task_row(rec, rec.get("state", "PENDING_ARGS_AVAIL"), None)
    out = {}
    for task_id, row in owner_rows.items():
        seen = worker_rows.get(task_id)
        if seen is None or seen["state"] == "FAILED" or _RANK[seen["state"]] < _RANK[row["state"]]:
            out[task_id] = row  # not reached a worker yet, or being retried after a failed attempt
        else:
            out[task_id] = seen
    for task_id, row in worker_rows.items():
        out.setdefault(task_id, row)
    rows = sorted(out.values(), key=lambda r: (r.get("start_time_ms") or 0, r["task_id"] or ""))
    for row in rows:
        row.pop("_start", None)
    return rows


def list_tasks(filters=None, *, limit: int = DEFAULT_LIMIT, detail: bool = False,
               timeout: float = DEFAULT_TIMEOUT_S, source=None) -> list[dict]:
    """Tasks and actor calls, pending, running and finished (finished ones as long as their peer keeps
    them). With `detail=False` error messages are cut to their last line."""
    flt = _check_args(filters, limit)
    rows = _apply(merge_tasks(_source(source).state("tasks", timeout, _narrowing(flt))), flt, limit)
    if not detail:
        for row in rows:
            msg = row.get("error_message")
            if msg:
                row["error_message"] = msg.strip().splitlines()[-1]
    return rows


def summarize_tasks(*, timeout: float = DEFAULT_TIMEOUT_S, source=None) -> dict:
    """Counts of tasks by function (or method) name and state, as Ray's `summarize_tasks`."""
    rows = merge_tasks(_source(source).state("tasks", timeout))
    summary: dict[str, dict] = {}
    for row in rows:
        entry = summary.setdefault(row["name"], {"func_or_class_name": row["name"], "type": row["type"],
                                                 "state_counts": {}})
        entry["state_counts"][row["state"]] = entry["state_counts"].get(row["state"], 0) + 1
    totals: dict[str, int] = {}
    for row in rows:
        totals[row["state"]] = totals.get(row["state"], 0) + 1
    return {"cluster": {"summary": summary, "total_tasks": len(rows), "state_counts": totals}}


def recent_failures(peers: list[dict], limit: int = 20) -> list[dict]:
    rows = [r for r in merge_tasks(peers) if r["state"] == "FAILED"]
    rows.sort(key=lambda r: r.get("end_time_ms") or 0, reverse=True)
    return rows[:limit]


# ---- actors --------------------------------------------------------------------------------------------

def merge_actors(peers: list[dict]) -> list[dict]:
    actors: dict[str, dict] = {}
    hosted: dict[str, dict] = {}
    for peer in peers:
        for proc_id, data in (peer.get("processes") or {}).items():
            for rec in data.get("owned", ()):
                actors[rec["actor_id"]] = dict(rec)
            h = data.get("hosted")
            if h:
                hosted[h["actor_id"]] = dict(h, node_id=peer.get("peer"))
    out = []
    for actor_id, rec in actors.items():
        h = hosted.get(actor_id, {})
        alive_here = h.get("alive") and rec["state"] in ("ALIVE", "RESTARTING")
        out.append({"actor_id": actor_id, "class_name": rec.get("class_name"), "state": rec["state"],
                    "name": rec.get("name"), "namespace": rec.get("namespace"), "job_id": rec.get("job_id"),
                    "owner": rec.get("owner"),
                    "node_id": h.get("node_id") if alive_here else None,
                    "pid": h.get("pid") if alive_here else None,
                    "worker_id": rec.get("worker_id"), "detached": rec.get("detached"),
                    "num_restarts": rec.get("restarts", 0)})
    return sorted(out, key=lambda r: r["actor_id"])


def list_actors(filters=None, *, limit: int = DEFAULT_LIMIT, timeout: float = DEFAULT_TIMEOUT_S,
                source=None) -> list[dict]:
    """Actors as their owners know them (state, restarts) and where they run (node, pid)."""
    flt = _check_args(filters, limit)
    return _apply(merge_actors(_source(source).state("actors", timeout)), flt, limit)


# ---- objects -------------------------------------------------------------------------------------------

def merge_objects(peers: list[dict]) -> list[dict]:
    """One row per object, from its owner's reference table, with the peers holding a stored copy."""
    locations: dict[str, list] = {}
    spilled: dict[str, bool] = {}
    for peer in peers:
        for oid, _size, is_spilled in peer.get("objects", ()):
            locations.setdefault(oid, []).append(peer.get("peer"))
            spilled[oid] = spilled.get(oid, False) or bool(is_spilled)
    rows: dict[str, dict] = {}
    refs_elsewhere: dict[str, int] = {}
    for peer in peers:
        for proc_id, refs in (peer.get("processes") or {}).items():
            for oid, owned, local, pins, borrowers, state, size in refs:
                if owned:
                    rows[oid] = {"object_id": oid, "owner": proc_id, "node_id": peer.get("peer"),
                                 "state": state, "size_bytes": size, "local_refs": local, "pins": pins,
                                 "borrowers": sorted(b for b, n in (borrowers or {}).items() if n > 0),
                                 "locations": locations.get(oid, []), "spilled": spilled.get(oid, False)}
                else:
                    refs_elsewhere[oid] = refs_elsewhere.get(oid, 0) + (local or 0)
    for oid, row in rows.items():
        row["borrowed_refs"] = refs_elsewhere.get(oid, 0)
    return sorted(rows.values(), key=lambda r: r["object_id"])


def list_objects(filters=None, *, limit: int = DEFAULT_LIMIT, timeout: float = DEFAULT_TIMEOUT_S,
                 source=None) -> list[dict]:
    """Objects that some process still references, with owner, size and where copies are stored."""
    flt = _check_args(filters, limit)
    return _apply(merge_objects(_source(source).memory(timeout)), flt, limit)


# ---- nodes and jobs ------------------------------------------------------------------------------------

def node_rows(nodes: list[dict]) -> list[dict]:
    return [{"node_id": n["NodeID"], "state": "ALIVE" if n.get("Alive") else "DEAD",
             "membership_state": n.get("State"), "address": n.get("Address"),
             "resources_total": n.get("Resources", {}), "resources_available": n.get("Available", {}),
             "queued": n.get("Queued", 0), "workers": n.get("Workers", 0),
             "store_used_bytes": n.get("StoreUsed", 0), "store_capacity_bytes": n.get("StoreCapacity", 0),
             "spilled_bytes": n.get("Spilled", 0), "last_heard_s": n.get("LastHeardS")} for n in nodes]


def list_nodes(filters=None, *, limit: int = DEFAULT_LIMIT, timeout: float = DEFAULT_TIMEOUT_S,
               source=None) -> list[dict]:
    flt = _check_args(filters, limit)
    return _apply(node_rows(_source(source).nodes(timeout)), flt, limit)


def job_rows(jobs: list[dict], nodes: list[dict]) -> list[dict]:
    """Jobs from the replicated table; one whose peer is dead and that never said it ended is FAILED."""
    alive = {n["NodeID"] for n in nodes if n.get("Alive")}
    out = []
    for job in jobs:
        row = dict(job)
        if row.get("state") in ("RUNNING", "PENDING") and row.get("peer") not in alive:
            row["state"] = "FAILED"
            row["message"] = f"its peer {row.get('peer')} died"
        out.append(row)
    return sorted(out, key=lambda r: r.get("start_time", 0))


def list_jobs(filters=None, *, limit: int = DEFAULT_LIMIT, timeout: float = DEFAULT_TIMEOUT_S,
              source=None) -> list[dict]:
    """Every job (driver) the cluster's table knows, including submitted ones (see p2pcompute.jobs)."""
    flt = _check_args(filters, limit)
    src = _source(source)
    return _apply(job_rows(src.jobs(timeout), src.nodes(timeout)), flt, limit)


def get_task(task_id: str, *, timeout: float = DEFAULT_TIMEOUT_S, source=None) -> dict | None:
    rows = list_tasks([("task_id", "=", task_id)], limit=1, detail=True, timeout=timeout, source=source)
    return rows[0] if rows else None


__all__ = ["list_tasks", "list_actors", "list_objects", "list_nodes", "list_jobs", "summarize_tasks",
           "get_task", "TASK_STATES"]
