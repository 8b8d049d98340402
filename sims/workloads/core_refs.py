"""Reference actions of processes that run the owner core: `RefOps` for drivers whose table is the core's.

A driver (`sims/owner_driver.py`) does not own a `ReferenceTable` of its own: its table is the owner core's
(`core.refs`), and the effects of what the user does to it (drop a ref, ...) go back through the core
(`core.apply`), which carries out each `Free` — dropping the value from the directory, releasing lineage,
stopping an actor whose last handle went — as the client's effect runner does. The core reports every
free it carries out (`owner_driver.observed`), and the workload judges it here (`on_free`).

What the core does by itself — pin a task's arguments, register the worker a push carries refs to, adopt
the refs inside a returned value — is mirrored in the ground truth by the hooks below (`task_submitted`,
`pushed`, `replied`, `task_ended` — the last called as the core ends the task, before it releases the
arguments), from what a user program and the wire say, never from the core's counts.
Workers keep their own tables (`RefOps` as before).
"""

from __future__ import annotations

from p2pcompute.errors import RemoteProtocolError
from p2pcompute.ownership.wire_values import contained_of, result_from_wire
from sims.workloads.refs import RefOps, _tid, written_off


class CoreRefOps(RefOps):
    def table(self, proc):
        if proc.refs is None and getattr(proc, "core", None) is not None:
            proc.refs = proc.core.refs
            self.procs[proc.proc_id] = proc
        return super().table(proc)

    def run(self, proc, effects: list) -> None:
        if getattr(proc, "core", None) is None:
            super().run(proc, effects)
        elif effects:
            proc.apply(effects)

    # ---- the core's frees ----

    def on_free(self, proc, object_id: str) -> None:
        self.truth.on_free(_tid(proc), object_id, lambda holder: written_off(proc, holder))

    # ---- what the core does with refs, mirrored in the truth ----

    def task_submitted(self, proc, arg_ids: list) -> None:
        """A submitted task holds its arguments until it ends, whatever the user does with the refs."""
        tid = _tid(proc)
        for oid in arg_ids:
            self.truth.hold(tid, oid)

    def task_ended(self, proc, arg_ids: list) -> None:
        tid = _tid(proc)
        for oid in arg_ids:
            self.truth.release(tid, oid)

    def pushed(self, proc, to: str, refs: list) -> None:
        """The core pushed a task carrying `refs` (it registered the receiver): they are on the wire."""
        dest = to[6:]
        if dest not in self.truth.dead:
            for oid, _owner in refs:
                self.truth.hold(("wire", dest), oid)

    def replied(self, proc, return_ids: list, returns, live: bool) -> None:
        """A reply's values arrived; `live`: the core takes them (its task is still waiting for them)."""
        tid = _tid(proc)
        for oid, entry in zip(return_ids, returns if type(returns) is list else ()):
            try:
                refs = contained_of(result_from_wire(entry))
            except RemoteProtocolError:
                continue
            if live and oid in proc.refs:
                self.truth.set_value(oid, tuple(r[0] for r in refs))
                for r in refs:
                    self._used(proc, tid, r[0])
            for r in refs:
                self.truth.release(("wire", tid), r[0], strict=not self.lossy)


class CoreRefHooks:
    """The owner-side hooks a workload on the owner core shares (`self.ops` is its `CoreRefOps`): what a push
    carries, what a reply brings back, and the core's frees, all handed to the checks."""

    def on_push(self, driver, msg, to: str) -> None:
        if msg.refs:
            self.ops.pushed(driver, to, msg.refs)

    def on_reply(self, driver, msg) -> None:
        rec = driver.core.tasks.get(msg.task_id)
        live = rec is not None and not rec.done and msg.system_error is None
        return_ids = rec.return_ids if rec is not None else [f"{msg.task_id}.{i}" for i in range(len(msg.returns))]
        self.ops.replied(driver, return_ids, msg.returns, live)

    def on_free(self, driver, object_id: str) -> None:
        self.ops.on_free(driver, object_id)
