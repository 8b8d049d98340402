"""Moving objects between peers: a peer pulls a copy from the holder, in chunks, with a bounded window.

A client that needs an object stored on another machine asks its own peer (`FetchObject`). The peer pulls it
once — several local readers of one object share the transfer — writing chunks straight into a file of its
store, so memory use stays at `window` chunks however large the object. When complete, it tells the waiting
clients (`ObjectFetched`) and the object's owner (`AddLocation`), so the copy is freed with the original.

The holder side reads chunks from its store file with `pread` and answers `PullObject` with `ObjectChunk`.
"""

from __future__ import annotations

import logging
import os
import time

from p2pcompute.errors import ObjectLostError
from p2pcompute.ownership import messages as om

log = logging.getLogger("p2pcompute.transfers")

CHUNK_BYTES = 8 << 20
WINDOW = 4
STALL_TIMEOUT_S = 10.0


class _Transfer:
    __slots__ = ("object_id", "size", "holder_addr", "owner_addr", "fd", "next_offset", "received",
                 "inflight", "waiters", "last_progress", "tmp")

    def __init__(self, object_id: str, size: int, holder_addr: str, owner_addr: str, tmp: str, fd: int):
        self.object_id = object_id
        self.size = size
        self.holder_addr = holder_addr
        self.owner_addr = owner_addr
        self.tmp = tmp
        self.fd = fd
        self.next_offset = 0
        self.received = 0
        self.inflight = 0
        self.waiters: list[tuple[str, str]] = []  # (reply_to, request_id)
        self.last_progress = time.monotonic()


class TransferServer:
    def __init__(self, peer):
        self.peer = peer
        self.transfers: dict[str, _Transfer] = {}
        self.handles = (om.FetchObject, om.PullObject, om.ObjectChunk)
        self.bytes_sent = 0
        self.bytes_received = 0

    def dispatch(self, sender: str, msg) -> None:
        t = type(msg)
        if t is om.FetchObject:
            self._on_fetch(msg)
        elif t is om.PullObject:
            self._on_pull(msg)
        elif t is om.ObjectChunk:
            self._on_chunk(msg)

    # ---- fetching side ------------------------------------------------------------------------------

    def _on_fetch(self, msg: om.FetchObject) -> None:
        store = self.peer.store
        oid = msg.object_id
        if not _valid_id(oid) or msg.size < 0:
            self._reply(msg.reply_to, msg.request_id, oid, "bad object id or size")
            return
        if store.exists(oid):
            self._reply(msg.reply_to, msg.request_id, oid, None)
            return
        transfer = self.transfers.get(oid)
        if transfer is None:
            dead = self.peer.dead_peer_at(msg.holder_addr)
            if dead is not None:
                # Never wait on a holder we know is gone: the owner rebuilds the object instead.
                self._reply(msg.reply_to, msg.request_id, oid, f"the holder peer {dead} is dead")
                return
            tmp = store.file_of(oid) + ".fetch"
            fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
            os.ftruncate(fd, msg.size)
            transfer = _Transfer(oid, msg.size, msg.holder_addr, msg.owner_addr, tmp, fd)
            self.transfers[oid] = transfer
            self._pump(transfer)
        transfer.waiters.append((msg.reply_to, msg.request_id))
        if msg.size == 0:
            self._complete(transfer)

    def _pump(self, transfer: _Transfer) -> None:
        while transfer.inflight < WINDOW and transfer.next_offset < transfer.size:
            length = min(CHUNK_BYTES, transfer.size - transfer.next_offset)
            self.peer.send(transfer.holder_addr, om.PullObject(transfer.object_id, transfer.next_offset, length,
                                                                self.peer.addr))
            transfer.next_offset += length
            transfer.inflight += 1

    def _on_chunk(self, msg: om.ObjectChunk) -> None:
        transfer = self.transfers.get(msg.object_id)
        if transfer is None:
            return
        if msg.error is not None or msg.total != transfer.size or msg.offset < 0 or \
                msg.offset + len(msg.data) > transfer.size:
            self._fail(transfer, msg.error or "the holder sent a chunk that does not fit the object")
            return
        os.pwrite(transfer.fd, msg.data, msg.offset)
        transfer.inflight -= 1
        transfer.received += len(msg.data)
        transfer.last_progress = time.monotonic()
        self.bytes_received += len(msg.data)
        if transfer.received >= transfer.size:
            self._complete(transfer)
        else:
            self._pump(transfer)

    def _complete(self, transfer: _Transfer) -> None:
        os.close(transfer.fd)
        store = self.peer.store
        os.rename(transfer.tmp, store.file_of(transfer.object_id))
        del self.transfers[transfer.object_id]
        self.peer.objects.sealed(transfer.object_id, transfer.size)
        self.peer.objects.maybe_spill()
        for reply_to, request_id in transfer.waiters:
            self._reply(reply_to, request_id, transfer.object_id, None)
        self.peer.send(transfer.owner_addr, om.AddLocation(transfer.object_id, self.peer.peer_id, self.peer.addr,
                                                            store.path))

    def _fail(self, transfer: _Transfer, why: str) -> None:
        try:
            os.close(transfer.fd)
            os.unlink(transfer.tmp)
        except OSError:
            pass
        self.transfers.pop(transfer.object_id, None)
        for reply_to, request_id in transfer.waiters:
            self._reply(reply_to, request_id, transfer.object_id, why)

    def _reply(self, reply_to: str, request_id: str, oid: str, error: str | None) -> None:
        self.peer.send(reply_to, om.ObjectFetched(request_id, oid, self.peer.store.path, error))

    def on_peer_died(self, peer_id: str, addr: str) -> None:
        for transfer in list(self.transfers.values()):
            if transfer.holder_addr == addr:
                self._fail(transfer, f"the holder peer {peer_id} died")

    def on_tick(self, now_ns: int) -> None:
        if not self.transfers:
            return
        now = time.monotonic()
        for transfer in list(self.transfers.values()):
            if now - transfer.last_progress > STALL_TIMEOUT_S:
                self._fail(transfer, f"no data from the holder for {STALL_TIMEOUT_S:.0f} s")

    # ---- holding side -------------------------------------------------------------------------------

    def _on_pull(self, msg: om.PullObject) -> None:
        oid = msg.object_id
        if not _valid_id(oid) or msg.offset < 0 or not 0 < msg.length <= CHUNK_BYTES * 2:
            self.peer.send(msg.reply_to, om.ObjectChunk(oid, msg.offset, 0, b"", "bad pull request"))
            return
        try:
            fd = self.peer.store.open_fd(oid)
        except ObjectLostError:
            self.peer.send(msg.reply_to, om.ObjectChunk(oid, msg.offset, 0, b"",
                                                         f"object {oid} is not held by peer {self.peer.peer_id}"))
            return
        try:
            total = os.fstat(fd).st_size
            data = os.pread(fd, msg.length, msg.offset)
        finally:
            os.close(fd)
        self.bytes_sent += len(data)
        self.peer.send(msg.reply_to, om.ObjectChunk(oid, msg.offset, total, data, None))


def _valid_id(oid) -> bool:
    return isinstance(oid, str) and 0 < len(oid) < 200 and "/" not in oid and not oid.startswith(".")
