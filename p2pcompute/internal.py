"""Introspection for operators: `memory_summary()` — what is held where, and who still references it."""

from __future__ import annotations

from p2pcompute.state import runtime


def memory_report(timeout_s: float = 10.0) -> list[dict]:
    """One report per peer: its store (used, capacity, spilled), the objects it holds, and for each of its
    processes the references that process holds (owned or borrowed, with counts and borrowers)."""
    from p2pcompute.runtime import messages as rm
    rt = runtime()
    reply = rt.peer_request(lambda rid: rm.MemoryRequest(rid, rt.addr, True), timeout_s)
    return reply.peers


def memory_summary(timeout_s: float = 10.0) -> str:
    return format_report(memory_report(timeout_s))


def format_report(peers: list[dict], max_rows: int = 50) -> str:
    refs_by_object: dict[str, list[str]] = {}
    lines = []
    for peer in peers:
        for proc, refs in peer.get("processes", {}).items():
            for oid, owned, local, pins, borrowers, _state, _size in refs:
                who = []
                if local:
                    who.append(f"{proc}:{local} ref(s)")
                if pins:
                    who.append(f"{proc}:{pins} pin(s)")
                if owned and borrowers:
                    who.extend(f"borrowed by {b}" for b, n in borrowers.items() if n > 0)
                if who:
                    refs_by_object.setdefault(oid, []).extend(who)
    for peer in sorted(peers, key=lambda p: p.get("peer", "")):
        store = peer.get("store", {})
        lines.append(f"peer {peer.get('peer')}: {store.get('objects', 0)} object(s) in memory, "
                     f"{_mib(store.get('used', 0))} of {_mib(store.get('capacity', 0))}; "
                     f"{store.get('spilled_objects', 0)} spilled, {_mib(store.get('spilled', 0))}")
        objects = sorted(peer.get("objects", []), key=lambda o: -o[1])
        for oid, size, spilled in objects[:max_rows]:
            owner = oid.split(".", 1)[0]
            who = "; ".join(refs_by_object.get(oid, [])) or "no reference reported (being freed?)"
            lines.append(f"  {oid:<32} {_mib(size):>10}{' spilled' if spilled else '        '}  owner {owner}  "
                         f"held by: {who}")
        if len(objects) > max_rows:
            lines.append(f"  ... and {len(objects) - max_rows} more")
        if peer.get("unanswered"):
            lines.append(f"  (no answer from {', '.join(peer['unanswered'])})")
    return "\n".join(lines)


def _mib(n) -> str:
    return f"{(n or 0) / 2**20:.1f} MiB"
