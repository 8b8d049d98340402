"""The report of a run: a JSON-ready dict, its text rendering, and (with matplotlib installed) a plot.

Task time in system (submit to reply) is given in units of the mean service time, so 1.0 is a task that
waited for nothing; throughput counts finished tasks per simulated second of the load phase. Detection
time runs from a crash until every peer that was up then has marked the crashed peer dead.
"""

from __future__ import annotations

from sims.invariants import INVARIANTS
from sims.options import SimOptions

S = 1_000_000_000

_BY_WORKLOAD = {
    "membership": ("membership_agreement", "encodable"),
    "tasks": ("lease_capacity", "lease_accounting", "leases_die_with_holder", "tasks_finish",
              "membership_agreement", "encodable"),
    "actors": ("lease_capacity", "lease_accounting", "leases_die_with_holder", "tasks_finish", "actor_order",
               "refs_safe", "membership_agreement", "encodable"),
    "dag": ("lease_capacity", "lease_accounting", "leases_die_with_holder", "tasks_finish", "refs_safe",
            "refs_not_lost", "membership_agreement", "encodable"),
    "names": ("names_once", "table_agreement", "membership_agreement", "encodable"),
    "mixed": tuple(INVARIANTS),
}


def _stats(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    v = sorted(values)
    n = len(v)
    return {"n": n, "mean": round(sum(v) / n, 3), "p50": round(v[(n - 1) // 2], 3),
            "p99": round(v[int(0.99 * (n - 1))], 3), "max": round(v[-1], 3)}


def build_report(cluster, opts: SimOptions, rows, scheduler, *, quiet_ns: int, wall_build_s: float,
                 wall_run_s: float) -> dict:
    engine, net, ledger, tracker = cluster.engine, cluster.net, cluster.ledger, cluster.tracker
    load_s = opts.seconds
    total_s = engine.now / S
    n_avg = _mean_up(rows) or opts.peers
    mean_service = opts.service.mean_ns()
    lat = [x / mean_service for x in ledger.latency_ns]
    bytes_sent, exact = net.bytes_sent()
    messages = net.messages_sent()
    invariants = {}
    for name in _BY_WORKLOAD[opts.workload]:
        found = cluster.violations.of(name)
        invariants[name] = {"ok": not found, "violations": cluster.violations.counts.get(name, 0),
                            "first": found[0].message if found else None, "meaning": INVARIANTS[name]}
    finished_in_load = sum(1 for t in ledger.finish_ns if t <= load_s * S)
    report = {
        "options": opts.describe(),
        "replay": opts.replay_command(),
        "ok": not cluster.violations,
        "event_log_hash": engine.log.hexdigest(),
        "events": engine.events_run,
        "wall_s": {"build": round(wall_build_s, 2), "run": round(wall_run_s, 2),
                   "total": round(wall_build_s + wall_run_s, 2)},
        "simulated_s": {"load": load_s, "quiet": round(quiet_ns / S, 2), "total": round(total_s, 2)},
        "peers": {"initial": opts.peers, "up_at_end": len(cluster.up), "slots": len(cluster.slots),
                  "mean_up": round(n_avg, 1)},
        "faults": dict(scheduler.counts) if scheduler else {},
        "invariants": invariants,
        "violations": [{"invariant": v.invariant, "t_s": round(v.at_ns / S, 3), "message": v.message}
                       for v in cluster.violations.items],
        "detection": {
            "crashes_timed": len(tracker.times_ns),
            "mean_s": _round(sum(tracker.times_ns) / len(tracker.times_ns) / S) if tracker.times_ns else None,
            "max_s": _round(max(tracker.times_ns) / S) if tracker.times_ns else None,
            "first_mean_s": _round(sum(tracker.first_ns) / len(tracker.first_ns) / S) if tracker.first_ns else None,
            "still_pending_at_end": tracker.unfinished,
            "false_dead_declarations": cluster.false_dead,
            "fenced_peers": cluster.fenced,  # told they were declared dead: down, as crashed (death is final)
        },
        "network": {
            "messages": messages,
            "per_peer_per_s": _round(messages / n_avg / total_s) if total_s else 0,
            "membership_per_peer_per_s": _round(net.membership_messages() / n_avg / total_s) if total_s else 0,
            "bytes": bytes_sent, "bytes_exact": exact,
            "bytes_per_peer_per_s": int(bytes_sent / n_avg / total_s) if total_s else 0,
            "dropped": dict(net.dropped), "duplicated": net.duplicated,
            "delayed_by_partition": net.delayed_by_partition,
        },
    }
    if ledger.submitted_total:
        report["tasks"] = {
            "submitted": ledger.submitted_total, "finished": ledger.finished, "failed": dict(ledger.failed),
            "unfinished": len(ledger.pending), "starved_by_actors": ledger.starved,
            "throughput_per_s": _round(finished_in_load / load_s),
            "mean_service_ms": _round(mean_service / 1e6),
            "time_in_system_x_service": _stats(lat),
        }
        report["leases"] = {"grants": cluster.audit.grants, "max_peer_utilisation": _round(cluster.audit.max_utilisation),
                            "infeasible_warnings": cluster.infeasible}
    extra = cluster.workload.metrics()
    if extra:
        report["workload"] = extra
    report["series"] = _series(rows, ledger, mean_service, cluster.faults_log)
    return report


def _mean_up(rows) -> float:
    return sum(r[2] for r in rows) / len(rows) if rows else 0.0


def _round(x: float) -> float:
    return round(x, 3)


def _series(rows, ledger, mean_service: float, faults_log) -> dict:
    """Per-sample series, plus task latency per second of finish time."""
    out = {"t_s": [round(r[0] / S, 3) for r in rows], "agreement": [round(r[1], 3) for r in rows],
           "accuracy": [round(r[6], 4) for r in rows],
           "up": [r[2] for r in rows], "messages": [r[3] for r in rows], "tasks_finished": [r[4] for r in rows]}
    buckets: dict[int, list[float]] = {}
    for t, lat in zip(ledger.finish_ns, ledger.latency_ns):
        buckets.setdefault(t // S, []).append(lat / mean_service)
    secs = sorted(buckets)
    out["latency_t_s"] = secs
    out["latency_mean"] = [round(sum(buckets[s]) / len(buckets[s]), 3) for s in secs]
    out["latency_p99"] = [round(sorted(buckets[s])[int(0.99 * (len(buckets[s]) - 1))], 3) for s in secs]
    out["faults"] = [(round(t / S, 3), kind, who) for t, kind, who in faults_log[:5000]]
    return out


def format_text(report: dict) -> str:
    o = report["options"]
    lines = [f"sims run: {o['peers']} peers, workload {o['workload']}, seed {o['seed']}, "
             f"{report['simulated_s']['load']}s load + {report['simulated_s']['quiet']}s quiet simulated "
             f"in {report['wall_s']['total']}s wall ({report['events']} events)"]
    if o["faults"]:
        counts = ", ".join(f"{k} {v}" for k, v in report["faults"].items() if v)
        lines.append(f"faults: {o['faults']}  ->  {counts or 'none happened'}")
    lines.append("invariants:")
    for name, res in report["invariants"].items():
        mark = "ok  " if res["ok"] else "FAIL"
        lines.append(f"  {mark} {name:24s} {res['meaning']}")
        if not res["ok"]:
            lines.append(f"       {res['violations']} violation(s); first: {res['first']}")
    t = report.get("tasks")
    if t:
        tis = t["time_in_system_x_service"]
        failed = ", ".join(f"{k} {v}" for k, v in t["failed"].items()) or "none"
        lines.append(f"tasks: {t['submitted']} submitted, {t['finished']} finished, failed: {failed}; "
                     f"throughput {t['throughput_per_s']}/s")
        if tis.get("n"):
            lines.append(f"  time in system (x mean service {t['mean_service_ms']}ms): mean {tis['mean']}, "
                         f"p50 {tis['p50']}, p99 {tis['p99']}, max {tis['max']}")
    d = report["detection"]
    if d["crashes_timed"]:
        lines.append(f"failure detection: {d['crashes_timed']} crashes, all peers knew after mean {d['mean_s']}s, "
                     f"max {d['max_s']}s (first peer: mean {d['first_mean_s']}s); "
                     f"{d['false_dead_declarations']} false dead declarations, {d['fenced_peers']} peers fenced")
    elif d["false_dead_declarations"]:
        lines.append(f"failure detection: {d['false_dead_declarations']} false dead declarations, "
                     f"{d['fenced_peers']} peers fenced")
    n = report["network"]
    lines.append(f"network: {n['per_peer_per_s']} msgs/peer/s ({n['membership_per_peer_per_s']} membership), "
                 f"{n['bytes_per_peer_per_s']} B/peer/s {'exact' if n['bytes_exact'] else 'estimated'}, "
                 f"{n['messages']} messages, {n['bytes']} bytes")
    w = report.get("workload")
    if w:
        lines.append("workload: " + ", ".join(f"{k} {v}" for k, v in w.items()))
    lines.append(f"event log hash: {report['event_log_hash']}")
    lines.append(("OK" if report["ok"] else "VIOLATIONS") + f" — replay: {report['replay']}")
    return "\n".join(lines)


def plot(report: dict, path: str) -> str | None:
    """Write the plot; returns None, or why it could not (matplotlib is an optional extra)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'p2pcompute[plot]'); no plot written"
    s = report["series"]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    if s["latency_t_s"]:
        ax1.plot(s["latency_t_s"], s["latency_mean"], label="mean")
        ax1.plot(s["latency_t_s"], s["latency_p99"], label="p99")
        ax1.set_yscale("log")
    ax1.set_ylabel("time in system / mean service")
    ax1.set_title(f"{report['options']['workload']}: {report['options']['peers']} peers, seed "
                  f"{report['options']['seed']}")
    colors = {"crash": "red", "restart": "green", "pause": "orange", "partition-both": "purple",
              "partition-in": "purple", "partition-out": "purple", "leave": "brown", "join": "blue",
              "kill": "gray"}
    seen = set()
    for t, kind, _ in s["faults"]:
        if kind in colors:
            ax1.axvline(t, color=colors[kind], alpha=0.25, lw=0.8, label=kind if kind not in seen else None)
            seen.add(kind)
    ax1.legend(loc="upper right", fontsize="small")
    ax2.plot(s["t_s"], s["agreement"], label="share of peers agreeing exactly with the truth (sampled)")
    ax2.plot(s["t_s"], s["accuracy"], label="mean accuracy of a peer's member list (Jaccard with the truth)")
    ax2.set_ylim(-0.05, 1.05)
    ax2.set_xlabel("simulated time (s)")
    ax2.set_ylabel("membership agreement")
    ax2.axvline(report["simulated_s"]["load"], color="black", ls="--", lw=0.8, label="quiet period begins")
    ax2.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
