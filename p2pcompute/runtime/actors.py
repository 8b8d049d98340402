"""The client process's handle on the actor core (`p2pcompute/ownership/actors.py`, part of the owner core).

User threads and the API modules create, kill and look up actors through this object; every decision and
every effect goes through the owner core, which applies the actor core's effects itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from p2pcompute.runtime.client import ClientRuntime, TaskRecord


class ActorManager:
    def __init__(self, runtime: "ClientRuntime"):
        self.rt = runtime
        self.core = runtime.core.actors
        self.owned = self.core.owned      # read by the state API and the timeline
        self.callers = self.core.callers

    def owner_of(self, actor_id: str) -> str:
        return self.rt.core.owner_of_actor(actor_id)

    def register_handle(self, actor_id: str, owner_addr: str) -> None:
        self.core.caller(actor_id, owner_addr)

    def create(self, rec: "TaskRecord", max_restarts: int, detached: bool, name_key: str | None = None,
               name_record: dict | None = None) -> None:
        """I/O thread: place a new actor. `rec` is its creation task (its return id is the actor id)."""
        self._do(self.core.create(rec, max_restarts, detached, name_key, name_record))

    def kill(self, actor_id: str, no_restart: bool) -> None:
        """I/O thread. A process that holds a handle but never called the actor has no caller record yet:
        make one, so the kill reaches the actor's owner."""
        self.core.caller(actor_id, self.owner_of(actor_id))
        self._do(self.core.kill(actor_id, no_restart))

    def _do(self, effects: list) -> None:
        core = self.rt.core
        from p2pcompute.runtime.client import now_ns
        self.rt.run_effects(core.run(now_ns(), core.apply, effects))
