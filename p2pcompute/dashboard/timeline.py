"""Task events as a Chrome trace (the JSON that Perfetto and chrome://tracing open).

One process per peer, one thread per worker. Each finished or running attempt is a complete event ("X")
from the moment its worker started it to the moment its reply left, with three children in order: reading
its arguments, running the user code, storing the result. A worker's main thread runs one task at a time,
so a worker's slices never overlap and the children nest inside their task. Time spent queued on the worker
before starting overlaps other tasks, so it is drawn as an async slice ("b"/"e") on a queue track of its own.
Timestamps are wall-clock microseconds; peers on different machines are as aligned as their clocks.
"""

from __future__ import annotations


_PHASES = (("fetch args", "start_ns", "args_ns"), ("execute", "args_ns", "exec_ns"),
           ("store result", "exec_ns", "end_ns"))


def _attempts(peers: list[dict]) -> list[tuple[str, dict]]:
    out = []
    for peer in peers:
        node = peer.get("peer", "?")
        for ev in peer.get("events", ()):
            out.append((node, ev))
        for data in (peer.get("processes") or {}).values():
            for ev in data.get("running", ()):
                out.append((node, ev))
    return out


def chrome_trace(peers: list[dict], now_ns: int | None = None) -> list[dict]:
    import time
    now_ns = now_ns or time.time_ns()
    pids: dict[str, int] = {}
    tids: dict[tuple, int] = {}
    trace: list[dict] = []

    def pid_of(node: str) -> int:
        if node not in pids:
            pids[node] = len(pids) + 1
            trace.append({"ph": "M", "name": "process_name", "pid": pids[node], "tid": 0,
                          "args": {"name": f"peer {node}"}})
        return pids[node]

    def tid_of(pid: int, worker: str) -> int:
        key = (pid, worker)
        if key not in tids:
            tids[key] = len(tids) + 1
            trace.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tids[key],
                          "args": {"name": worker}})
        return tids[key]

    for node, ev in _attempts(peers):
        pid = pid_of(node)
        worker = str(ev.get("worker_id") or "?")
        tid = tid_of(pid, worker)
        start = ev.get("start_ns") or 0
        end = ev.get("end_ns") or now_ns
        if not start:
            continue
        marks = {"start_ns": start}
        last = start
        for key in ("args_ns", "exec_ns", "end_ns"):
            value = ev.get(key) or (end if key == "end_ns" else 0)
            if not value and ev.get("state") == "RUNNING":
                value = end if key == "exec_ns" else last
            last = min(max(value, last), end)   # clocks read in order, but clamp: nesting must hold
            marks[key] = last
        args = {"task_id": ev.get("task_id"), "state": ev.get("state"), "job_id": ev.get("job_id"),
                "owner": ev.get("owner"), "queue_wait_ms": round((start - (ev.get("recv_ns") or start)) / 1e6, 3)}
        if ev.get("error_type"):
            args["error_type"] = ev["error_type"]
        trace.append({"ph": "X", "name": ev.get("name") or "?", "cat": ev.get("kind") or "task", "pid": pid,
                      "tid": tid, "ts": start / 1000, "dur": max(0.0, (end - start) / 1000), "args": args})
        for name, a, b in _PHASES:
            trace.append({"ph": "X", "name": name, "cat": "phase", "pid": pid, "tid": tid, "ts": marks[a] / 1000,
                          "dur": max(0.0, (marks[b] - marks[a]) / 1000), "args": {"task_id": ev.get("task_id")}})
        recv = ev.get("recv_ns") or start
        if recv < start:
            qtid = tid_of(pid, worker + " queue")
            ident = ev.get("task_id")
            trace.append({"ph": "b", "name": f"queued: {ev.get('name')}", "cat": "queue", "id": ident, "pid": pid,
                          "tid": qtid, "ts": recv / 1000})
            trace.append({"ph": "e", "name": f"queued: {ev.get('name')}", "cat": "queue", "id": ident, "pid": pid,
                          "tid": qtid, "ts": start / 1000})
    return trace


def timeline(filename: str | None = None, timeout: float = 30.0):
    """Ray's `ray.timeline()`: every peer's task events as Chrome trace events; written to `filename` as
    JSON if given (open it in Perfetto or chrome://tracing), else returned."""
    import json

    from p2pcompute.util.state import RuntimeSource
    events = chrome_trace(RuntimeSource().state("tasks", timeout))
    if filename is None:
        return events
    with open(filename, "w") as f:
        json.dump(events, f)
    return None
