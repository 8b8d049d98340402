"""Which peers hold a table replica: the policy the leader follows, one member at a time.

Theory of operation. The leader is told which peers are alive (`TableReplica.on_members`) and, whenever its
last configuration change has committed, asks `next_replicas` for the next one. Each step adds or removes a
single member (Raft's single-server change), so any majority of the old set overlaps any majority of the new.

- The target is 5 replicas (any two may die at once and a majority is left), 3 while fewer than 5 peers
  are alive, 1 alone: the set grows only toward an odd size, because an even set tolerates no more failures
  than the odd set below it (1 -> 2 happens only when a third peer is there to make it 3, 3 -> 4 only when
  a fifth is there to make it 5).
- A replica that membership reports dead is removed first, and only when a live spare can take its place:
  3 -> 2 needs both survivors to commit, while 3 -> 4 would need 3 of 4 with one of them dead and the new one
  still catching up. With no spare, a dead replica stays while the set is odd and has at most one dead
  member (dropping it buys no fault tolerance); but a set of 5 with two dead members shrinks to 3 (5 -> 4
  -> 3, each step committed by the three survivors), which tolerates one more death where 5 with 3 live
  tolerates none.
- Machines. Addresses carry a machine id (`machine=M`, else the TCP host stands for the machine). Spares are
  taken from the machine holding the fewest replicas, so replicas spread over distinct machines when the
  cluster has them; and when a machine holds two replicas while another live machine holds none, the set
  moves one over (add the spare, then drop a member of the crowded machine). Two peers on one machine die
  together more often than two on two machines.
- Members are added only while every member answers the leader: a member dead but not yet declared so
  (membership takes seconds, Raft's leader notices in one election timeout) plus a new member that dies
  before it catches up would leave a set of 4 with 2 dead, which can elect no one.
- A member whose address changed (same peer id, new address) is re-added with the new address.
- The leader never removes itself; if it must go, another leader will remove it.

Ties are broken by sorted peer id, so every run of the same inputs makes the same choice.
"""

from __future__ import annotations

from collections import Counter


def machine_of(addr: str) -> str:
    """The machine an address is on: its `machine=` part, else its TCP host, else the address itself."""
    host = None
    for part in addr.split():
        if part.startswith("machine="):
            return part[8:]
        if part.startswith("tcp://") and host is None:
            host = part[6:].rsplit(":", 1)[0]
    return host if host is not None else addr


def next_replicas(replicas: dict[str, str], alive: dict[str, str], leader_id: str,
                  target: int, grow: bool = True) -> dict[str, str] | None:
    """The next replica set (one member different from `replicas`), or None when none is due. With `grow`
    False (a member is not answering the leader, though membership has not declared it dead yet) no member
    is added: adding one to a set with an undetected dead member can leave a set that no majority answers."""
    for member, addr in sorted(replicas.items()):
        if member != leader_id and member in alive and alive[member] != addr:
            return {**replicas, member: alive[member]}
    dead = sorted(member for member in replicas if member not in alive and member != leader_id)
    spares = sorted(peer for peer in alive if peer not in replicas)
    if dead and spares:
        return _without(replicas, dead[0])
    if dead and len(replicas) > 3 and (len(dead) >= 2 or len(replicas) % 2 == 0):
        return _without(replicas, dead[0])
    if not grow:
        return _shrink(replicas, dead, leader_id) if len(replicas) > target else None
    if len(replicas) < target and spares and (len(replicas) % 2 == 0 or len(spares) >= 2):
        return _with(replicas, _best_spare(replicas, alive, spares))
    if len(replicas) > target:
        return _shrink(replicas, dead, leader_id)
    if len(replicas) == target and spares and not dead:
        crowded = _crowded_machine(replicas)
        if crowded is not None:
            fresh = [peer for peer in spares if machine_of(alive[peer]) not in _machines(replicas)]
            if fresh:
                return _with(replicas, (fresh[0], alive[fresh[0]]))
    return None


def _machines(replicas: dict[str, str]) -> Counter:
    return Counter(machine_of(addr) for addr in replicas.values())


def _crowded_machine(replicas: dict[str, str]) -> str | None:
    """A machine holding more than one replica (the most crowded, ties by name), or None."""
    counts = _machines(replicas)
    crowded = sorted((-n, m) for m, n in counts.items() if n > 1)
    return crowded[0][1] if crowded else None


def _best_spare(replicas: dict[str, str], alive: dict[str, str], spares: list[str]) -> tuple[str, str]:
    """The spare on the machine that holds the fewest replicas (sorted peer id among equals)."""
    counts = _machines(replicas)
    peer = min(spares, key=lambda p: (counts[machine_of(alive[p])], p))
    return peer, alive[peer]


def _shrink(replicas: dict[str, str], dead: list[str], leader_id: str) -> dict[str, str] | None:
    """One member fewer: a dead one first, else one from the most crowded machine, else the last by id."""
    if dead:
        return _without(replicas, dead[0])
    others = {peer: addr for peer, addr in replicas.items() if peer != leader_id}
    if not others:
        return None
    counts = _machines(replicas)
    victim = max(sorted(others), key=lambda p: counts[machine_of(others[p])])
    if counts[machine_of(others[victim])] == 1:
        victim = sorted(others)[-1]
    return _without(replicas, victim)


def _with(replicas: dict[str, str], member: tuple[str, str]) -> dict[str, str]:
    return {**replicas, member[0]: member[1]}


def _without(replicas: dict[str, str], member: str) -> dict[str, str]:
    return {peer: addr for peer, addr in replicas.items() if peer != member}
