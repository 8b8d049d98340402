"""Collectives between the workers of a training group: allreduce, broadcast, allgather, barrier.

Theory of operation. Every worker actor of a group has a *mailbox*: its `deliver(tag, value)` method (run on
one of the actor's spare threads while the training loop blocks in another) files a value under a tag, and
`Mailbox.take(tag)` waits for it. A worker sends to another by calling `peer.deliver.remote(tag, value)`:
values over 100 KiB go through the object store once (mapped, not copied, by a receiver on the same
machine; pulled once by a receiver elsewhere), so bytes travel worker to worker and never through the driver
or a coordinator. Tags are `(sequence number of the collective, step, sender)`: every rank calls the same
collectives in the same order (as with MPI or NCCL), so a tag names one message of one step of one call.

- **allreduce**, large arrays: a ring. The flat array is cut into N chunks; in N-1 reduce-scatter steps each
  rank sends one chunk to its right neighbour and folds in the one from its left, after which rank r holds
  the reduced chunk (r+1) mod N; N-1 allgather steps pass the reduced chunks round the ring. Each rank sends
  2(N-1)/N of the array in all, whatever N. Each chunk is reduced in one fixed order and then copied, so all
  ranks end with bit-identical results.
- **allreduce**, small arrays (under `ring_threshold_bytes`): latency matters more than bytes, so every rank
  sends its whole array to every other (one step instead of 2(N-1)) and reduces them in rank order.
- **broadcast** / **allgather**: the sender `put`s its array once and passes the reference, so the store holds
  one copy per machine however many ranks read it.

Nothing here knows about trainers: a `Communicator` needs only its rank, the peers' actor handles and a
mailbox, so it can serve any group of actors that expose `deliver`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

import p2pcompute as p2p
from p2pcompute.errors import P2PError

REDUCE_OPS: dict[str, Callable] = {"sum": np.add, "mean": np.add, "max": np.maximum, "min": np.minimum,
                                   "prod": np.multiply}

# Below this many bytes an allreduce is latency bound: one all-to-all step beats 2(N-1) ring steps.
RING_THRESHOLD_BYTES = 256 * 1024


class CollectiveTimeoutError(P2PError, TimeoutError):
    """A rank waited too long for a peer's message: a peer died, or ranks called different collectives."""


class Mailbox:
    """Values delivered by peers, filed by tag until the training loop takes them."""

    def __init__(self) -> None:
        self._values: dict[Any, Any] = {}
        self._cv = threading.Condition()

    def put(self, tag, value) -> None:
        with self._cv:
            self._values[tag] = value
            self._cv.notify_all()

    def take(self, tag, timeout_s: float | None) -> Any:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cv:
            while tag not in self._values:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise CollectiveTimeoutError(
                        f"no message {tag!r} from a peer after {timeout_s} s: a peer may have died, or the ranks "
                        "did not call the same collectives in the same order")
                self._cv.wait(remaining)
            return self._values.pop(tag)


@dataclass
class CollectiveStats:
    """Bytes this rank sent, by collective, so tests and benchmarks can check the ring's traffic."""

    bytes_sent: dict[str, int] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)

    def add(self, op: str, nbytes: int) -> None:
        self.bytes_sent[op] = self.bytes_sent.get(op, 0) + nbytes


def _as_array(value, what: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.hasobject:
        raise TypeError(f"{what} needs a numpy array of numbers or booleans, not dtype {arr.dtype}: "
                        "convert it with np.asarray(x, dtype=...) first")
    return arr


def _chunk_bounds(n: int, parts: int) -> list[tuple[int, int]]:
    base, extra = divmod(n, parts)
    bounds, start = [], 0
    for i in range(parts):
        stop = start + base + (1 if i < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


class Communicator:
    """One rank's end of a group: send to and receive from the other ranks' mailboxes."""

    def __init__(self, rank: int, peers: list, mailbox: Mailbox, *, timeout_s: float | None = 1800.0,
                 ring_threshold_bytes: int = RING_THRESHOLD_BYTES) -> None:
        if not 0 <= rank < len(peers):
            raise ValueError(f"rank {rank} is outside a group of {len(peers)}")
        self.rank = rank
        self.world_size = len(peers)
        self._peers = peers
        self._mailbox = mailbox
        self._seq = 0
        self.timeout_s = timeout_s
        self.ring_threshold_bytes = ring_threshold_bytes
        self.stats = CollectiveStats()
        # Refs this rank `put` for broadcast/allgather, by collective sequence number. A receiver that holds
        # such a ref (in its mailbox) is not counted as a borrower by the core (see docs/mlkit/train.md,
        # "Known core issue"), so the sender keeps its own ref until every rank has provably read it.
        self._held: list[tuple[int, object]] = []

    # ---- point to point ----------------------------------------------------------------------------------

    def _send(self, dst: int, tag, value, op: str) -> None:
        if isinstance(value, np.ndarray):
            self.stats.add(op, value.nbytes)
        self._peers[dst].deliver.remote(tag, value)

    def _recv(self, tag):
        return self._mailbox.take(tag, self.timeout_s)

    def _next_seq(self, op: str) -> int:
        self._seq += 1
        self.stats.calls[op] = self.stats.calls.get(op, 0) + 1
        return self._seq

    def _heard_from_all(self, seq: int) -> None:
        # Collective `seq` got data that every rank sent after finishing all earlier collectives (each rank
        # reads a broadcast or allgather value before it returns), so their refs are no longer needed.
        if self._held:
            self._held = [(s, ref) for s, ref in self._held if s >= seq]

    def _share(self, seq: int, arr: np.ndarray):
        # Large arrays go to the store once and travel as a ref; small ones inline.
        if arr.nbytes <= 100 * 1024:
            return arr
        ref = p2p.put(arr)
        self._held.append((seq, ref))
        return ref

    # ---- collectives -------------------------------------------------------------------------------------

    def allreduce(self, array, op: str = "sum") -> np.ndarray:
        """The elementwise reduction of every rank's `array` (same shape and dtype on every rank)."""
        if op not in REDUCE_OPS:
            raise ValueError(f"allreduce op must be one of {sorted(REDUCE_OPS)}, not {op!r}")
        arr = _as_array(array, "allreduce")
        if op == "mean" and not np.issubdtype(arr.dtype, np.inexact):
            arr = arr.astype(np.float64)
        seq = self._next_seq("allreduce")
        n = self.world_size
        if n == 1:
            out = np.array(arr, copy=True)
        elif arr.nbytes < self.ring_threshold_bytes or arr.size < n:
            out = self._allreduce_direct(seq, arr, REDUCE_OPS[op])
        else:
            out = self._allreduce_ring(seq, arr, REDUCE_OPS[op])
        if op == "mean":
            out = np.divide(out, n, out=out, casting="unsafe")
        self._heard_from_all(seq)
        return out

    def _allreduce_direct(self, seq: int, arr: np.ndarray, ufunc) -> np.ndarray:
        shape_key = (arr.shape, arr.dtype.str)
        for dst in range(self.world_size):
            if dst != self.rank:
                self._send(dst, (seq, 0, self.rank), (shape_key, arr), "allreduce")
        parts = []
        for src in range(self.world_size):
            if src == self.rank:
                parts.append(arr)
                continue
            key, value = self._recv((seq, 0, src))
            if key != shape_key:
                raise ValueError(f"allreduce: rank {src} sent shape/dtype {key}, rank {self.rank} has {shape_key}; "
                                 "every rank must pass arrays of one shape and dtype")
            parts.append(value)
        out = np.array(parts[0], copy=True)
        for part in parts[1:]:  # rank order, so every rank computes the same bits
            ufunc(out, part, out=out)
        return out

    def _allreduce_ring(self, seq: int, arr: np.ndarray, ufunc) -> np.ndarray:
        n, r = self.world_size, self.rank
        buf = np.array(arr, copy=True, order="C").reshape(-1)
        bounds = _chunk_bounds(buf.size, n)
        right, left = (r + 1) % n, (r - 1) % n

        def chunk(i):
            a, b = bounds[i % n]
            return buf[a:b]

        for step in range(n - 1):  # reduce-scatter
            self._send(right, (seq, step, r), chunk(r - step), "allreduce")
            incoming = self._recv((seq, step, left))
            target = chunk(r - step - 1)
            if incoming.shape != target.shape or incoming.dtype != target.dtype:
                raise ValueError(f"allreduce: rank {left} sent a chunk of {incoming.shape} {incoming.dtype}, "
                                 f"rank {r} expected {target.shape} {target.dtype}; every rank must pass "
                                 "arrays of one shape and dtype")
            ufunc(incoming, target, out=target)  # incoming first: the same operand order on every rank
        for step in range(n - 1):  # allgather of the reduced chunks
            self._send(right, (seq, n - 1 + step, r), chunk(r + 1 - step), "allreduce")
            chunk(r - step)[...] = self._recv((seq, n - 1 + step, left))
        return buf.reshape(arr.shape)

    def broadcast(self, array, src_rank: int = 0) -> np.ndarray:
        """`array` of rank `src_rank`, on every rank (other ranks' argument is ignored and may be None)."""
        self._check_rank(src_rank, "broadcast")
        seq = self._next_seq("broadcast")
        if self.world_size == 1:
            return np.array(_as_array(array, "broadcast"), copy=True)
        if self.rank == src_rank:
            arr = _as_array(array, "broadcast")
            ref = self._share(seq, arr)
            for dst in range(self.world_size):
                if dst != self.rank:
                    self._send(dst, (seq, 0, self.rank), [ref], "broadcast")
            return np.array(arr, copy=True)
        (value,) = self._recv((seq, 0, src_rank))
        if isinstance(value, p2p.ObjectRef):
            value = p2p.get(value)
        return np.array(value, copy=True)

    def allgather(self, array) -> list[np.ndarray]:
        """Every rank's `array`, in rank order (shapes may differ between ranks)."""
        arr = _as_array(array, "allgather")
        seq = self._next_seq("allgather")
        if self.world_size > 1:
            ref = self._share(seq, arr)
            for dst in range(self.world_size):
                if dst != self.rank:
                    self._send(dst, (seq, 0, self.rank), [ref], "allgather")
        out = []
        for src in range(self.world_size):
            if src == self.rank:
                out.append(np.array(arr, copy=True))
                continue
            (value,) = self._recv((seq, 0, src))
            if isinstance(value, p2p.ObjectRef):
                value = p2p.get(value)
            out.append(np.array(value, copy=True))
        self._heard_from_all(seq)
        return out

    def allgather_object(self, obj) -> list:
        """Every rank's picklable `obj`, in rank order (for small values: labels, counts, addresses)."""
        seq = self._next_seq("allgather_object")
        for dst in range(self.world_size):
            if dst != self.rank:
                self._send(dst, (seq, 0, self.rank), obj, "allgather_object")
        out = [obj if src == self.rank else self._recv((seq, 0, src)) for src in range(self.world_size)]
        self._heard_from_all(seq)
        return out

    def barrier(self) -> None:
        """Return once every rank has called barrier."""
        seq = self._next_seq("barrier")
        for dst in range(self.world_size):
            if dst != self.rank:
                self._send(dst, (seq, 0, self.rank), None, "barrier")
        for src in range(self.world_size):
            if src != self.rank:
                self._recv((seq, 0, src))
        self._heard_from_all(seq)

    def _check_rank(self, rank: int, what: str) -> None:
        if not isinstance(rank, (int, np.integer)) or not 0 <= rank < self.world_size:
            raise ValueError(f"{what}: src_rank must be an int in [0, {self.world_size}), not {rank!r}")
