"""What each dashboard endpoint answers (after `auth` allowed the request); no HTTP in here.

Every answer is built from the peer's replies through the dashboard's `PeerLink` and the merging functions
of `util.state`, so the page, `p2p list` and the Python state API always agree.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass

from p2pcompute.util import state

TIMEOUT_S = 10.0
_JOB_PATH = re.compile(r"^/api/jobs/([A-Za-z0-9_.:-]{1,128})(/logs|/stop)?$")
_PACKAGE_PATH = re.compile(r"^/api/packages/([0-9a-f]{64})$")


@dataclass
class Raw:
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    status: int = 200


def _error(status: int, message: str):
    from p2pcompute.dashboard.server import HTTPError
    return HTTPError(status, message)


def _limit(query: dict, default: int = 200) -> int:
    try:
        n = int(query.get("limit", default))
    except ValueError:
        raise _error(400, "limit must be an integer") from None
    return max(1, min(n, 10_000))


def handle(dash, method: str, path: str, query: dict, body):
    link = dash.link
    if method == "GET":
        if path == "/":
            from p2pcompute.dashboard.page import PAGE
            return Raw(PAGE.encode(), "text/html; charset=utf-8")
        if path == "/api/version":
            from p2pcompute import __version__
            return {"version": __version__, "peer": dash.peer_id}
        if path == "/api/cluster":
            status = link.status(TIMEOUT_S)
            return {"peer": dash.peer_id, "uptime_s": status.get("uptime_s"), "table": status.get("table"),
                    "nodes": state.node_rows(status.get("nodes", [])), "dashboard": dash.url,
                    "jobs_enabled": dash.jobs is not None and dash.guard.token is not None}
        if path == "/api/nodes":
            return state.node_rows(link.nodes(TIMEOUT_S))
        if path == "/api/jobs":
            rows = state.job_rows(link.jobs(TIMEOUT_S), link.nodes(TIMEOUT_S))
            return rows[-_limit(query):]
        if path == "/api/actors":
            return state.merge_actors(link.state("actors", TIMEOUT_S))[:_limit(query)]
        if path == "/api/tasks":
            peers = link.state("tasks", TIMEOUT_S)
            rows = state.merge_tasks(peers)
            counts: dict[str, int] = {}
            by_name: dict[str, dict] = {}
            for row in rows:
                counts[row["state"]] = counts.get(row["state"], 0) + 1
                entry = by_name.setdefault(row["name"], {})
                entry[row["state"]] = entry.get(row["state"], 0) + 1
            failures = sorted((r for r in rows if r["state"] == "FAILED"),
                              key=lambda r: r.get("end_time_ms") or 0, reverse=True)[:20]
            recent = [r for r in rows if r["state"] != "FINISHED"][-_limit(query, 100):]
            return {"total": len(rows), "counts": counts, "by_name": by_name, "failures": failures,
                    "unfinished": recent, "unanswered": [p.get("unanswered") for p in peers if p.get("unanswered")]}
        if path == "/api/objects":
            peers = link.memory(TIMEOUT_S)
            out = []
            for peer in peers:
                store = peer.get("store", {})
                objs = sorted(peer.get("objects", []), key=lambda o: -o[1])
                out.append({"peer": peer.get("peer"), "store": store,
                            "largest": [{"object_id": o[0], "size_bytes": o[1], "spilled": o[2]} for o in objs[:20]],
                            "processes": {proc: len(refs) for proc, refs in (peer.get("processes") or {}).items()}})
            return {"peers": out, "objects": state.merge_objects(peers)[:_limit(query)]}
        if path == "/api/logs":
            from p2pcompute.dashboard import logs
            return [{"name": os.path.basename(p), "size": os.path.getsize(p)} for p in logs.files(dash.log_dir)]
        if path.startswith("/api/logs/"):
            from p2pcompute.dashboard import logs
            p = logs.safe_path(dash.log_dir, path[len("/api/logs/"):])
            if p is None:
                raise _error(404, "no such log file")
            if "offset" in query:
                try:
                    offset = max(0, int(query["offset"]))
                except ValueError:
                    raise _error(400, "offset must be an integer") from None
                text, nxt = logs.read_from(p, offset)
                return {"text": text, "next_offset": nxt}
            return Raw(logs.tail(p, _limit(query, 500)).encode())
        if path == "/api/timeline":
            from p2pcompute.dashboard import timeline
            return timeline.chrome_trace(link.state("tasks", TIMEOUT_S))
        if path == "/metrics":
            from p2pcompute.dashboard import metrics_text
            cluster = query.get("cluster") in ("1", "true", "yes")
            peers = link.state("metrics", TIMEOUT_S) if cluster else _local_metrics(link)
            return Raw(metrics_text.render(peers, cluster=True).encode(), "text/plain; version=0.0.4; charset=utf-8")
        m = _JOB_PATH.match(path)
        if m and dash.jobs is not None:
            job_id, what = m.group(1), m.group(2)
            if what == "/logs":
                try:
                    offset = max(0, int(query.get("offset", 0)))
                except ValueError:
                    raise _error(400, "offset must be an integer") from None
                return dash.jobs.logs(job_id, offset)
            if what is None:
                return dash.jobs.status(job_id)
        raise _error(404, f"no endpoint {path}")
    # ---- writes (the guard required the token) ---------------------------------------------------------
    if dash.jobs is None:
        raise _error(403, "job submission is not enabled on this peer: start it with `p2p start --enable-jobs` "
                          "(or `p2p join ... --enable-jobs`)")
    m = _PACKAGE_PATH.match(path)
    if m:
        return dash.jobs.store_package(m.group(1), body())
    if path == "/api/jobs":
        import json
        try:
            spec = json.loads(body() or b"{}")
        except ValueError as exc:
            raise _error(400, f"the job spec is not JSON: {exc}") from None
        return dash.jobs.submit(spec)
    m = _JOB_PATH.match(path)
    if m and m.group(2) == "/stop":
        return dash.jobs.stop_job(m.group(1))
    raise _error(404, f"no endpoint {method} {path}")


def _local_metrics(link) -> list[dict]:
    from p2pcompute.runtime import messages as rm
    return link.request(lambda to, rid: rm.StateRequest(rid, to, "metrics", False, {}), TIMEOUT_S).peers


def now_ms() -> int:
    return int(time.time() * 1000)
