"""Prometheus' text exposition format (version 0.0.4), written with the standard library.

Input: the per-peer reports of a `StateRequest("metrics")` — each peer's own numbers (`peer_metrics`) and
its processes' user metrics (`util.metrics.snapshot()`). User metrics of one name and tag set are summed over
a peer's processes. Every series carries a `peer` label, so one scrape of one peer can cover the cluster
(`cluster=True`) or only that peer.
"""

from __future__ import annotations

import math


def _esc(value) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_esc(v)}"' for k, v in labels.items()) + "}"


def _num(v) -> str:
    v = float(v)
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(v) if v != int(v) or abs(v) >= 1e16 else str(int(v))


class _Out:
    def __init__(self):
        self.families: dict[str, tuple[str, str, list]] = {}

    def add(self, name: str, kind: str, help_text: str, labels: dict, value) -> None:
        fam = self.families.setdefault(name, (kind, help_text, []))
        fam[2].append((name, labels, value))

    def add_raw(self, family: str, kind: str, help_text: str, sample: str, labels: dict, value) -> None:
        fam = self.families.setdefault(family, (kind, help_text, []))
        fam[2].append((sample, labels, value))

    def text(self) -> str:
        lines = []
        for name, (kind, help_text, samples) in self.families.items():
            lines.append(f"# HELP {name} {_esc(help_text)}")
            lines.append(f"# TYPE {name} {kind}")
            for sample, labels, value in samples:
                lines.append(f"{sample}{_labels(labels)} {_num(value)}")
        return "\n".join(lines) + "\n"


def _peer(out: _Out, report: dict) -> None:
    peer = report.get("peer", "?")
    m = report.get("peer_metrics") or {}
    base = {"peer": peer}
    for key, count in sorted((m.get("counters") or {}).items()):
        if key.startswith("tasks_"):
            state, _, kind = key[len("tasks_"):].partition(":")
            out.add("p2p_tasks_total", "counter", "task attempts that ended on this peer's workers",
                    dict(base, state=state, kind=kind), count)
        elif key.startswith("membership:"):
            out.add("p2p_membership_events_total", "counter", "peers seen changing to this state",
                    dict(base, state=key.split(":", 1)[1]), count)
        elif key.startswith("lease_"):
            out.add(f"p2p_{key}_total", "counter", f"lease decisions of this peer: {key[6:]}", base, count)
        elif key == "table_leader_changes":
            out.add("p2p_table_leader_changes_total", "counter", "changes of table leader this peer saw", base,
                    count)
    for key, name in (("transfer_bytes_sent", "p2p_transfer_sent_bytes_total"),
                      ("transfer_bytes_received", "p2p_transfer_received_bytes_total")):
        if key in m:
            out.add(name, "counter", "object bytes this peer's transfers moved", base, m[key])
    for key, help_text in (("queued_lease_requests", "lease requests waiting on this peer"),
                           ("leases", "leases granted and not returned"), ("workers", "worker processes"),
                           ("idle_workers", "workers without a lease"), ("processes", "local processes"),
                           ("store_used_bytes", "object store bytes in shared memory"),
                           ("store_capacity_bytes", "object store capacity"),
                           ("store_spilled_bytes", "object bytes spilled to disk"),
                           ("store_objects", "objects in shared memory"),
                           ("store_spilled_objects", "objects spilled to disk"),
                           ("task_events_kept", "finished task attempts this peer remembers"),
                           ("transfers_in_flight", "objects being pulled to or from this peer"),
                           ("uptime_s", "seconds since this peer started")):
        if key in m:
            name = "p2p_uptime_seconds" if key == "uptime_s" else f"p2p_{key}"
            out.add(name, "gauge", help_text, base, m[key])
    for state, n in sorted((m.get("members_by_state") or {}).items()):
        out.add("p2p_members", "gauge", "peers this peer knows, by membership state", dict(base, state=state), n)
    for res, units in sorted((m.get("resources_total") or {}).items()):
        out.add("p2p_resources_total", "gauge", "resources this peer offers (fixed-point units)",
                dict(base, resource=res), units)
    for res, units in sorted((m.get("resources_available") or {}).items()):
        out.add("p2p_resources_available", "gauge", "resources not leased (fixed-point units)",
                dict(base, resource=res), units)
    if "table_role" in m:
        out.add("p2p_table_leader", "gauge", "1 if this peer's table replica is the leader", base,
                1 if m["table_role"] == "leader" else 0)
    processes = report.get("processes") or {}
    pending: dict[str, int] = {}
    for data in processes.values():
        for state, n in (data.get("owned_pending") or {}).items():
            pending[state] = pending.get(state, 0) + n
    for state in ("PENDING_ARGS_AVAIL", "PENDING_NODE_ASSIGNMENT", "SUBMITTED_TO_WORKER"):
        out.add("p2p_tasks_pending", "gauge", "unfinished tasks owned by this peer's processes, by state",
                dict(base, state=state), pending.get(state, 0))
    if processes:
        out.add("p2p_worker_queued_tasks", "gauge", "tasks waiting in this peer's workers behind a running one",
                base, sum(int(d.get("worker_queue") or 0) for d in processes.values()))
    _user(out, peer, processes)


def _user(out: _Out, peer: str, processes: dict) -> None:
    merged: dict[str, dict] = {}
    for data in processes.values():
        for name, snap in (data.get("metrics") or {}).items():
            entry = merged.setdefault(name, {"kind": snap.get("kind"), "description": snap.get("description", ""),
                                             "tag_keys": snap.get("tag_keys", []),
                                             "boundaries": snap.get("boundaries"), "values": {}})
            if entry["kind"] != snap.get("kind"):
                continue  # two processes disagree on what the metric is: keep the first
            for tags, value in snap.get("values", []):
                key = tuple(tags)
                if entry["kind"] == "histogram":
                    old = entry["values"].get(key)
                    entry["values"][key] = value if old is None else [a + b for a, b in zip(old, value)]
                elif entry["kind"] == "gauge":
                    entry["values"][key] = value  # gauges are not summed: the last process answering wins
                else:
                    entry["values"][key] = entry["values"].get(key, 0) + value
    for name, e in sorted(merged.items()):
        for tags, value in e["values"].items():
            labels = dict(zip(e["tag_keys"], tags), peer=peer)
            if e["kind"] == "histogram":
                bounds = list(e["boundaries"] or []) + [math.inf]
                cumulative = 0
                for bound, count in zip(bounds, value[:-1]):
                    cumulative += count
                    out.add_raw(name, "histogram", e["description"], f"{name}_bucket",
                                dict(labels, le=_num(bound)), cumulative)
                out.add_raw(name, "histogram", e["description"], f"{name}_sum", labels, value[-1])
                out.add_raw(name, "histogram", e["description"], f"{name}_count", labels, cumulative)
            else:
                out.add(name, e["kind"], e["description"], labels, value)


def render(peers: list[dict], cluster: bool = True) -> str:
    out = _Out()
    for report in (peers if cluster else peers[:1]):
        _peer(out, report)
    return out.text()


def parse(text: str) -> dict[tuple, float]:
    """A small parser of the same format (for tests and `p2p metrics` consumers): (name, labels) -> value."""
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, rest = head.partition("{")
        labels = []
        rest = rest.rstrip("}")
        while rest:
            key, _, rest = rest.partition('="')
            val = []
            i = 0
            while i < len(rest):
                if rest[i] == "\\" and i + 1 < len(rest):
                    val.append({"n": "\n"}.get(rest[i + 1], rest[i + 1]))
                    i += 2
                    continue
                if rest[i] == '"':
                    break
                val.append(rest[i])
                i += 1
            labels.append((key.lstrip(","), "".join(val)))
            rest = rest[i + 1:].lstrip(",")
        samples[(name, tuple(sorted(labels)))] = float(value)
    return samples
