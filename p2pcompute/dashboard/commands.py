"""The observability commands of `p2p`: `list`, `summary`, `timeline`, `metrics`, `logs`.

Each asks the local peer (the one of `--home`) through a `PeerLink`; the peer gathers from the whole
cluster. Output is a table for people, `--json` for programs.
"""

from __future__ import annotations

import json
import os
import sys
import time

LIST_COLUMNS = {
    "tasks": ["task_id", "name", "state", "type", "node_id", "worker_id", "duration_ms", "error_type"],
    "actors": ["actor_id", "class_name", "state", "name", "node_id", "pid", "num_restarts"],
    "objects": ["object_id", "owner", "state", "size_bytes", "locations", "local_refs", "borrowers"],
    "nodes": ["node_id", "state", "address", "resources_total", "resources_available", "queued", "workers"],
    "jobs": ["job_id", "state", "peer", "entry", "message"],
}


def _parse_filters(items: list[str] | None) -> list[tuple]:
    out = []
    for item in items or ():
        if "!=" in item:
            key, value = item.split("!=", 1)
            out.append((key.strip(), "!=", value.strip()))
        elif "=" in item:
            key, value = item.split("=", 1)
            out.append((key.strip(), "=", value.strip()))
        else:
            raise ValueError(f"--filter {item!r}: use KEY=VALUE or KEY!=VALUE, e.g. --filter state=RUNNING")
    return out


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ",".join(f"{k}={v:g}" if isinstance(v, (int, float)) else f"{k}={v}" for k, v in value.items()
                        if k != "memory")
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "-"
    return str(value)


def print_table(rows: list[dict], columns: list[str], out=None) -> None:
    out = out or sys.stdout
    table = [[c.upper() for c in columns]] + [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [min(60, max(len(r[i]) for r in table)) for i in range(len(columns))]
    for r in table:
        out.write("  ".join(c[:60].ljust(w) for c, w in zip(r, widths)).rstrip() + "\n")


def _link(args):
    from p2pcompute.dashboard.peer_link import PeerLink
    return PeerLink.to_home(args.home)


def cmd_list(args) -> int:
    from p2pcompute.util import state
    filters = _parse_filters(args.filter)
    fn = {"tasks": state.list_tasks, "actors": state.list_actors, "objects": state.list_objects,
          "nodes": state.list_nodes, "jobs": state.list_jobs}[args.resource]
    link = _link(args)
    try:
        kwargs = {"detail": args.detail} if args.resource == "tasks" else {}
        rows = fn(filters, limit=args.limit, timeout=args.timeout, source=link, **kwargs)
    finally:
        link.close()
    if link.unanswered:
        print(f"p2p list: no answer in time from {', '.join(link.unanswered)}; what they know is missing",
              file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    if not rows:
        print(f"no {args.resource}")
        return 0
    print_table(rows, LIST_COLUMNS[args.resource])
    if len(rows) == args.limit:
        print(f"(showing the first {args.limit}; --limit N for more)")
    return 0


def cmd_summary(args) -> int:
    from p2pcompute.util import state
    link = _link(args)
    try:
        summary = state.summarize_tasks(timeout=args.timeout, source=link)
    finally:
        link.close()
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    cluster = summary["cluster"]
    print(f"{cluster['total_tasks']} task(s): " +
          ", ".join(f"{n} {s}" for s, n in sorted(cluster["state_counts"].items())))
    rows = [{"name": name, "type": e["type"],
             "counts": ", ".join(f"{s}: {n}" for s, n in sorted(e["state_counts"].items()))}
            for name, e in sorted(cluster["summary"].items())]
    if rows:
        print_table(rows, ["name", "type", "counts"])
    return 0


def cmd_timeline(args) -> int:
    from p2pcompute.dashboard import timeline
    link = _link(args)
    try:
        events = timeline.chrome_trace(link.state("tasks", args.timeout))
    finally:
        link.close()
    path = args.output or f"p2p-timeline-{time.strftime('%Y%m%d-%H%M%S')}.json"
    with open(path, "w") as f:
        json.dump(events, f)
    print(f"wrote {len(events)} trace event(s) to {path}; open it in https://ui.perfetto.dev or chrome://tracing")
    return 0


def cmd_metrics(args) -> int:
    from p2pcompute.dashboard import metrics_text
    link = _link(args)
    try:
        sys.stdout.write(metrics_text.render(link.state("metrics", args.timeout, {}), cluster=True))
    finally:
        link.close()
    return 0


def cmd_logs(args) -> int:
    """Print (and with --follow, keep printing) the log files of this peer's home: the peer, workers,
    submitted jobs. `--peer`, `--actor`, `--task` narrow which process's log is read."""
    from p2pcompute.dashboard import logs
    from p2pcompute.runtime.home import Home
    home = Home(args.home)
    state = home.require_running()
    files = logs.select(state["log_dir"], proc=args.proc, task=args.task, actor=args.actor, home=args.home)
    if not files:
        print("no matching log file", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([{"file": os.path.basename(p), "text": logs.tail(p, args.lines)} for p in files], indent=2))
        return 0
    logs.follow(files, lines=args.lines, forever=args.follow)
    return 0


def add_parsers(sub) -> None:
    """Register the commands on the `p2p` parser."""
    lst = sub.add_parser("list", help="list tasks, actors, objects, nodes or jobs of the whole cluster")
    lst.add_argument("resource", choices=sorted(LIST_COLUMNS))
    lst.add_argument("--filter", "-f", action="append", metavar="KEY=VALUE",
                     help="keep rows where KEY=VALUE (or KEY!=VALUE); repeatable")
    lst.add_argument("--limit", type=int, default=100)
    lst.add_argument("--detail", action="store_true", help="tasks: full tracebacks")
    _common(lst)
    lst.set_defaults(func=_wrap(cmd_list))
    summ = sub.add_parser("summary", help="task counts by function and state")
    summ.add_argument("resource", choices=["tasks"])
    _common(summ)
    summ.set_defaults(func=_wrap(cmd_summary))
    tl = sub.add_parser("timeline", help="write every peer's task events as a Chrome trace (Perfetto)")
    tl.add_argument("-o", "--output", default=None)
    _common(tl)
    tl.set_defaults(func=_wrap(cmd_timeline))
    met = sub.add_parser("metrics", help="the cluster's metrics in Prometheus' text format")
    _common(met)
    met.set_defaults(func=_wrap(cmd_metrics))
    lg = sub.add_parser("logs", help="print the logs of this peer's processes (peer, workers, jobs)")
    lg.add_argument("--follow", "-F", action="store_true")
    lg.add_argument("--peer", dest="proc", default=None, help="a process id or prefix (peer id: all of it)")
    lg.add_argument("--task", default=None, help="the log of the worker that ran this task")
    lg.add_argument("--actor", default=None, help="the log of the worker hosting this actor")
    lg.add_argument("--lines", type=int, default=200)
    _common(lg)
    lg.set_defaults(func=_wrap(cmd_logs))


def _common(p) -> None:
    p.add_argument("--home", default=None)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the cluster's answers")


def _wrap(fn):
    def run(args):
        from p2pcompute.cli import CommandError
        try:
            return fn(args)
        except (ValueError, TypeError) as exc:
            raise CommandError(str(exc)) from None
    return run
