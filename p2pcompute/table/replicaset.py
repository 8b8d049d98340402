"""Which peers hold a table replica: the policy the leader follows, one member at a time.

Theory of operation. The leader is told which peers are alive (`TableReplica.on_members`) and, whenever its
last configuration change has committed, asks `next_replicas` for the next one. Each step adds or removes a
single member (Raft's single-server change), so any majority of the old set overlaps any majority of the new.

- A replica that membership reports dead is removed first, and only when a live spare can take its place:
  3 -> 2 needs both survivors to commit, while 3 -> 4 would need 3 of 4 with one of them dead and the new one
  still catching up. A replica reported dead with no spare stays: it may come back, and dropping it buys no
  fault tolerance.
- The set grows toward `target` from live spares, but only toward an odd size: an even set tolerates no more
  failures than the odd set below it, so 1 -> 2 happens only when a third peer is there to make it 3.
- A member whose address changed (same peer id, new address) is re-added with the new address.
- The leader never removes itself; if it must go, another leader will remove it.

Spares are taken in sorted order of peer id, so every run of the same inputs makes the same choice.
"""

from __future__ import annotations


def next_replicas(replicas: dict[str, str], alive: dict[str, str], leader_id: str,
                  target: int) -> dict[str, str] | None:
    """The next replica set (one member different from `replicas`), or None when none is due."""
    for member, addr in sorted(replicas.items()):
        if member != leader_id and member in alive and alive[member] != addr:
            return {**replicas, member: alive[member]}
    dead = sorted(member for member in replicas if member not in alive and member != leader_id)
    spares = sorted(peer for peer in alive if peer not in replicas)
    if dead and spares:
        return _without(replicas, dead[0])
    if len(replicas) < target and spares and (len(replicas) % 2 == 0 or len(spares) >= 2):
        return {**replicas, spares[0]: alive[spares[0]]}
    if len(replicas) > target:
        others = dead or sorted(member for member in replicas if member != leader_id)
        return _without(replicas, others[-1]) if others else None
    return None


def _without(replicas: dict[str, str], member: str) -> dict[str, str]:
    return {peer: addr for peer, addr in replicas.items() if peer != member}
