"""The owner's objects: where their copies are, who asked for them, and rebuilding lost ones from lineage.

Part of the owner core (`OwnerCore` inherits it; it uses the core's directory, reference table, tasks and
lineage). Borrowers ask the owner of an object (`GetObject`) and are answered once it is ready
(`ObjectStatus`); peers that pull a copy report it (`AddLocation`). When the reference table says an object
is free, its copies are freed on every holder. A copy lost with its peer is dropped from the locations; an
owned object with no copy left is rebuilt by running its task again (arguments first, recursively), at most
`max_retries` times, or fails with a clear `ObjectLostError`; a borrowed one is asked of its owner again.
"""

from __future__ import annotations

import logging

from p2pcompute import serialization
from p2pcompute.errors import ObjectFreedError, ObjectLostError, OwnerDiedError, PeerUnavailableError
from p2pcompute.ownership import messages as om
from p2pcompute.ownership.directory import ERROR, INLINE, PENDING, STORED
from p2pcompute.ownership.refcount import owner_id_of

log = logging.getLogger("p2pcompute.owner")


class ObjectOwner:
    """Methods of `OwnerCore` about objects (see the module's docstring)."""

    def on_put(self, object_id: str, contained: list, stored_size: int | None) -> None:
        """A value this process put (already in the directory) is registered: its refs, its stored copy."""
        if contained:
            self.apply(self.refs.set_contains(object_id, contained))
        if stored_size is not None:
            self._send(self.peer_addr, om.ObjectSealed(object_id, stored_size, self.addr))
        self._on_resolved(object_id)
        self._notify_remote_waiters(object_id)

    def fetch(self, object_ids: list[str]) -> None:
        """Ask owners about borrowed objects we need and know nothing of yet."""
        values = self.objects.values
        for oid in object_ids:
            if self.refs.is_owned(oid):
                if oid not in values and oid not in self.refs:
                    self.objects.resolve(oid, ERROR, error=serialization.system_error_bytes(
                        ObjectFreedError(f"object {oid} was already freed")))
                continue
            v = values.get(oid) or self.objects.value(oid)
            if v.requested or v.state != PENDING:
                continue
            owner = self.refs.owner_of(oid)
            if owner is None:
                continue
            v.requested = True
            self._send(owner, om.GetObject(oid, self.addr))

    def _on_get_object(self, sender: str, msg: om.GetObject) -> None:
        oid = msg.object_id
        if oid not in self.refs or not self.refs.is_owned(oid):
            state = "freed" if self.refs.is_owned(oid) else "lost"
            self._send(msg.reply_to, om.ObjectStatus(oid, state, None, [], [], None))
            return
        v = self.objects.values.get(oid)
        if v is None:
            with self.objects.lock:
                v = self.objects.value(oid)  # still being computed: the reply goes out when it is ready
        if v.state == PENDING:
            if v.remote_waiters is None:
                v.remote_waiters = []
            v.remote_waiters.append((sender, msg.reply_to))
            return
        self._reply_status(sender, msg.reply_to, oid, v)

    def _reply_status(self, sender: str, reply_to: str, oid: str, v) -> None:
        for inner_id, inner_owner in v.contained:
            self.apply(self.refs.on_sent(inner_id, inner_owner, sender))
        if v.state == INLINE:
            status = om.ObjectStatus(oid, "inline", v.data, [], [list(c) for c in v.contained], None)
        elif v.state == STORED:
            status = om.ObjectStatus(oid, "stored", None, [list(loc) + [v.size] for loc in v.locations],
                                     [list(c) for c in v.contained], None)
        else:
            status = om.ObjectStatus(oid, "error", None, [], [], v.error)
        self._send(reply_to, status)

    def _notify_remote_waiters(self, oid: str) -> None:
        v = self.objects.values.get(oid)
        if v is None or not v.remote_waiters:
            return
        waiters, v.remote_waiters = v.remote_waiters, None
        for sender, reply_to in waiters:
            self._reply_status(sender, reply_to, oid, v)

    def _on_object_status(self, _sender: str, msg: om.ObjectStatus) -> None:
        oid = msg.object_id
        contained = [tuple(c) for c in msg.contained if isinstance(c, list) and len(c) == 2]
        if msg.state == "inline" and msg.data is not None:
            self.objects.resolve(oid, INLINE, data=msg.data, size=len(msg.data), contained=contained)
        elif msg.state == "stored" and msg.locations:
            locs = [[loc[0], loc[1], loc[2]] for loc in msg.locations]
            size = msg.locations[0][3] if len(msg.locations[0]) > 3 else 0
            self.objects.resolve(oid, STORED, size=size, locations=locs, contained=contained)
        elif msg.state == "error" and msg.error is not None:
            self.objects.resolve(oid, ERROR, error=msg.error)
        else:
            error = (ObjectFreedError(f"object {oid} was freed by its owner") if msg.state == "freed" else
                     OwnerDiedError(f"object {oid}: its owner no longer has it (the owner restarted or died), "
                                    f"so it cannot be read or rebuilt"))
            self.objects.resolve(oid, ERROR, error=serialization.system_error_bytes(error))
        if contained:
            # The owner of `oid` sent these refs with its value (and registered us, or announced us to theirs).
            self.apply(self.refs.adopt_contained(oid, contained, owner_id_of(oid)))
        self._on_resolved(oid)

    def free_all_stored(self) -> None:
        """Leaving: every stored object this process owns dies with it, so free the copies now rather than
        leave them to the peers' cleanup."""
        by_holder: dict[str, list[str]] = {}
        for oid, v in list(self.objects.values.items()):
            if v.state == STORED and self.refs.is_owned(oid):
                for _peer_id, peer_addr, _path in v.locations:
                    by_holder.setdefault(peer_addr, []).append(oid)
        for addr, oids in by_holder.items():
            self._send(addr, om.FreeObjects(oids))

    def _on_add_location(self, _sender: str, msg: om.AddLocation) -> None:
        v = self.objects.values.get(msg.object_id)
        if v is None or msg.object_id not in self.refs or v.state != STORED:
            self._send(msg.peer_addr, om.FreeObjects([msg.object_id]))  # already gone: drop the copy too
            return
        loc = [msg.peer_id, msg.peer_addr, msg.store_path]
        if loc not in v.locations:
            v.locations.append(loc)

    def _on_free(self, object_id: str) -> None:
        v = self.objects.drop(object_id)
        rec = self.lineage.pop(object_id, None)
        if rec is not None:
            rec.lineage_live -= 1
            if rec.lineage_live <= 0 and rec.task_id not in self.tasks:
                rec.lineage_pinned = False
                self._release_args(rec)
        if v is None or not self.refs.is_owned(object_id):
            return
        if v.state == STORED:
            for _peer_id, peer_addr, _path in v.locations:
                self._send(peer_addr, om.FreeObjects([object_id]))
        if v.remote_waiters:
            for _sender, reply_to in v.remote_waiters:
                self._send(reply_to, om.ObjectStatus(object_id, "freed", None, [], [], None))
        self.apply(self.actors.on_handle_freed(object_id))

    def copies_unreadable(self, oid: str) -> None:
        """A reader of this process found no copy of `oid` it could read: every copy we know of is gone."""
        v = self.objects.values.get(oid)
        if v is None or v.state != STORED:
            return
        v.locations = []
        if self.refs.is_owned(oid):
            self._object_lost(oid, "no copy could be read")
        else:
            self._refetch(oid)

    def fail_everything(self, why: str) -> None:
        error = serialization.system_error_bytes(PeerUnavailableError(why))
        for oid, v in list(self.objects.values.items()):
            if v.state == PENDING:
                self.objects.resolve(oid, ERROR, error=error)

    # ---- lost copies ----------------------------------------------------------------------------------

    def _lose_copies_on(self, peer_id: str) -> None:
        """Drop locations on a dead peer. An owned object with no copy left is rebuilt from its lineage; a
        borrowed one is asked of its owner again (which rebuilds it)."""
        for oid, v in list(self.objects.values.items()):
            if v.state != STORED or not v.locations:
                continue
            left = [loc for loc in v.locations if loc[0] != peer_id]
            if len(left) == len(v.locations):
                continue
            v.locations = left
            if left:
                continue
            if self.refs.is_owned(oid):
                self._object_lost(oid, f"its only copy was on peer {peer_id}, which died")
            else:
                self._refetch(oid)

    def _refetch(self, oid: str) -> None:
        self.objects.reset(oid)
        v = self.objects.values.get(oid)
        if v is not None:
            v.requested = False
        self.fetch([oid])

    def _object_lost(self, oid: str, why: str) -> None:
        """An owned object lost every copy: run the task that made it again, or fail it clearly."""
        v = self.objects.values.get(oid)
        if v is None or oid not in self.refs:
            return
        rec = self.lineage.get(oid)
        if rec is None:
            made_by_put = oid not in self.task_of_object
            self.objects.resolve(oid, ERROR, error=serialization.system_error_bytes(ObjectLostError(
                f"object {oid} is lost: {why}. " + ("It was made by put(), which keeps no lineage, so it cannot "
                                                     "be rebuilt; keep important values alive on several peers "
                                                     "or recompute them in a task" if made_by_put else
                                                     "It cannot be rebuilt."))))
            self._on_resolved(oid)
            return
        if rec.task_id in self.tasks:
            self.objects.reset(oid)
            return  # already being rebuilt
        limit = rec.options.get("max_retries", 3)
        if 0 <= limit <= rec.rebuilds:
            self.objects.resolve(oid, ERROR, error=serialization.system_error_bytes(ObjectLostError(
                f"object {oid} is lost ({why}) and was already rebuilt {rec.rebuilds} time(s), the task's "
                f"max_retries")))
            self._on_resolved(oid)
            return
        rec.rebuilds += 1
        log.info("rebuilding %s by re-running %s (%s)", oid, rec.name, why)
        for rid in rec.return_ids:
            rv = self.objects.values.get(rid)
            if rv is not None and rv.state == STORED and not rv.locations:
                self.objects.reset(rid)
        rec.done = rec.scheduled = False
        rec.held = None
        self.tasks[rec.task_id] = rec
        for rid in rec.return_ids:
            self.task_of_object[rid] = rec.task_id
        # Its own arguments may be lost too: rebuild them first (recursively).
        for dep, _owner in rec.slot_refs:
            dv = self.objects.values.get(dep)
            if dv is not None and dv.state == STORED and not dv.locations and self.refs.is_owned(dep):
                self._object_lost(dep, why)
        self._resolve_deps(rec)
