"""The product's owner core broken on purpose, for the tests that prove the checks can fail.

Like `sims/broken.py`, each planted bug is a subclass of the real class — `OwnerCore` — which the simulator's
drivers build when asked (`--break lineage`, `--break actor-calls`); the production core carries no test
switch.

- `OwnerRebuildingWithoutArguments`: a finished task whose results live in other peers' stores keeps its
  lineage — so a lost copy is still rebuilt by running the task again — but no longer keeps the task's
  arguments pinned for it. Once the user drops them, the owner frees them; a rebuild then pushes refs to
  freed objects to a worker (`refs_safe`: "got a ref to ... after its owner freed it").
- `OwnerDroppingLostActorCalls`: the caller's actor machine forgets the calls in flight when the actor's
  worker dies — neither retried (`max_task_retries`) nor failed (`ActorUnavailableError`) — so they never
  end (`tasks_finish`).
"""

from __future__ import annotations

from p2pcompute.ownership.actors import ActorCore
from p2pcompute.ownership.owner import OwnerCore


class OwnerRebuildingWithoutArguments(OwnerCore):
    """Planted bug: lineage is kept, but not the arguments a rebuild needs."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._released_early: set[str] = set()

    def _complete(self, rec, error=None) -> None:
        super()._complete(rec, error)
        if rec.lineage_pinned and rec.task_id not in self._released_early:
            self._released_early.add(rec.task_id)
            super()._release_args(rec)

    def _release_args(self, rec) -> None:
        if rec.task_id not in self._released_early:  # else: released when the task first finished
            super()._release_args(rec)


class ActorCoreDroppingLostCalls(ActorCore):
    """Planted bug: calls in flight when the actor's worker dies are forgotten, neither retried nor failed."""

    def _lose_inflight(self, caller, why: str) -> list:
        caller.inflight.clear()
        return []


class OwnerDroppingLostActorCalls(OwnerCore):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.actors = ActorCoreDroppingLostCalls(self.addr)
