"""Where a request that does not run here should go: power of two choices over the gossiped views.

A peer's *load* is the share of its CPUs in use plus its queue per CPU; among the peers where the shape fits,
`choices` are sampled at random and the least loaded wins. Sampling a few rather than taking the best of all
keeps the choice cheap and, with stale views, avoids every peer herding onto the one that looked emptiest.
The lease core asks all of the sampled peers at once (late binding, see `LeaseSpillback`): the views decide
where to look, and the peers' own queues decide which one serves.
(`LeaseCore._candidates` finds the peers that fit: all of them in a small cluster, a random few in a big one.)
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from p2pcompute.lease import resources


@dataclass(slots=True)
class PeerView:
    """What this peer believes about another: from gossip, so possibly stale."""

    peer_id: str
    addr: str
    total: dict
    available: dict
    queued: int = 0


def load_of(view: PeerView) -> float:
    cpus = view.total.get(resources.CPU, 0)
    if cpus <= 0:
        return float(view.queued)
    used = cpus - view.available.get(resources.CPU, 0)
    return used / cpus + view.queued * resources.UNIT / cpus


def sample(candidates: list[PeerView], rng: random.Random, choices: int = 2) -> list[PeerView]:
    """Up to `choices` of the candidates, at random, least loaded first."""
    if len(candidates) > choices:
        candidates = rng.sample(candidates, choices)
    return sorted(candidates, key=load_of)


def pick(candidates: list[PeerView], rng: random.Random, choices: int = 2) -> PeerView | None:
    """The least loaded of `choices` candidates sampled at random."""
    found = sample(candidates, rng, choices)
    return found[0] if found else None
