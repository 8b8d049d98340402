"""Reconciliation: from the desired state of a deployment and the replicas that exist, the actions to take.

Theory of operation. A deployment has `target` replica *slots* per code version: slot `(version, i)` for
`i < target`. Each slot is a record in the cluster's replicated table (`state.py`) naming the replica actor
that fills it and its state: STARTING (claimed, constructor running), READY (serving), FAILED (constructor
raised), DRAINING (taking no new requests, finishing old ones). `plan` compares the slots with the desire and
returns actions:

- a slot of the current version that is missing is **started** (on the live peer with the fewest replicas of
  the deployment); one whose peer died is **replaced**;
- during a rolling update (slots of an older version still READY) at most `target + surge` replicas run:
  new ones are started a few at a time, and one old replica is **stopped** for each new one that is READY, so
  the number of serving replicas never drops below the target (no request has nowhere to go);
- slots beyond the target, and every slot of a deleted application, are stopped; a READY replica whose
  user_config is stale is **reconfigured** in place.

Every decision is a function of the table's contents, and ties are broken by fixed orders, so any agent can
run it: two agents with the same view take the same actions, and the table's compare-and-set on each slot
makes a start or replacement happen exactly once when two race. Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

STARTING, READY, FAILED, DRAINING = "STARTING", "READY", "FAILED", "DRAINING"


@dataclass(frozen=True)
class Slot:
    version: str
    index: int
    state: str
    node: str
    config: str = ""
    dead: bool = False   # its actor is known to be gone (its peer died, or a call said it died for good)


@dataclass(frozen=True)
class Start:
    version: str
    index: int
    node: str


@dataclass(frozen=True)
class Replace:
    slot: Slot
    node: str


@dataclass(frozen=True)
class Stop:
    slot: Slot


@dataclass(frozen=True)
class Remove:
    """Forget a dead slot that is no longer wanted (nothing left to stop)."""
    slot: Slot


@dataclass(frozen=True)
class Reconfigure:
    slot: Slot


@dataclass
class Plan:
    actions: list = field(default_factory=list)

    def of(self, kind) -> list:
        return [a for a in self.actions if isinstance(a, kind)]


def surge_of(target: int) -> int:
    """Extra replicas allowed during a rolling update: a quarter of the target, at least one."""
    return max(1, math.ceil(target / 4))


def _placement(slots: list[Slot], alive_nodes: list[str]):
    counts = {n: 0 for n in alive_nodes}
    for s in slots:
        if s.node in counts and not s.dead and s.state != DRAINING:
            counts[s.node] += 1

    def place() -> str:
        node = min(sorted(counts), key=lambda n: counts[n])
        counts[node] += 1
        return node
    return place


def plan(version: str | None, target: int, config: str, slots: list[Slot], alive_nodes: list[str]) -> Plan:
    """Actions that move `slots` towards `target` READY replicas of `version` (None: the app is deleted)."""
    if target < 0:
        raise ValueError(f"target must be >= 0, not {target}")
    out = Plan()
    alive = set(alive_nodes)
    if version is None:
        target = 0
    live = []
    for s in slots:
        if s.dead or s.node not in alive:
            dead = Slot(s.version, s.index, s.state, s.node, s.config, True)
            if s.version == version and s.index < target and s.state != DRAINING and alive_nodes:
                live.append(dead)   # kept for placement counts below as dead (not counted)
            else:
                out.actions.append(Remove(dead))
        else:
            live.append(s)
    place = _placement([s for s in live if not s.dead], alive_nodes)

    cur = [s for s in live if s.version == version]
    old = [s for s in live if s.version != version and not s.dead]
    failed = any(s.state == FAILED and not s.dead for s in cur)
    serving_old = sorted((s for s in old if s.state == READY), key=lambda s: (s.version, s.index))

    # Replace dead slots of the current version (their replicas served or were about to).
    for s in cur:
        if s.dead and alive_nodes:
            out.actions.append(Replace(s, place()))
    cur_live = [s for s in cur if not s.dead and s.state != DRAINING]
    wanted = [s for s in cur_live if s.index < target]
    have = {s.index for s in cur_live} | {s.index for s in cur if s.dead}

    # Start missing slots; while old replicas still serve, keep the total within target + surge.
    if not failed and alive_nodes:
        budget = target + surge_of(target) - len(wanted) - len(serving_old)
        for i in range(target):
            if i in have:
                continue
            if serving_old and budget <= 0:
                break
            out.actions.append(Start(version, i, place()))
            budget -= 1

    # Old replicas: stop those that are not serving at once, and one serving one per READY new one.
    for s in old:
        if s.state in (STARTING, FAILED):
            out.actions.append(Stop(s))
    ready_new = sum(1 for s in wanted if s.state == READY)
    excess = len(serving_old) + ready_new - target
    for s in reversed(serving_old):
        if excess <= 0:
            break
        out.actions.append(Stop(s))
        excess -= 1

    # A stop that was under way when its agent died is finished by whoever drives now.
    for s in live:
        if s.state == DRAINING and not s.dead:
            out.actions.append(Stop(s))

    # Downscaling: slots at or beyond the target go, highest index first.
    for s in sorted(cur_live, key=lambda s: -s.index):
        if s.index >= target:
            out.actions.append(Stop(s))

    for s in wanted:
        if s.state == READY and s.config != config:
            out.actions.append(Reconfigure(s))
    return out
