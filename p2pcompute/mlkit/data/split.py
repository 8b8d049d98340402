"""`streaming_split`: several consumers (e.g. trainer workers in other processes) sharing one execution.

A coordinator actor runs the dataset's streaming executor and hands each block to whichever consumer asks
next, so a fast consumer takes more and nobody waits for a slow one. Each `DataIterator` is picklable (an
actor handle and an index) and fetches block values itself, from wherever the block is. An epoch starts when
a consumer asks for a new one after every consumer has finished the previous one.
"""

from __future__ import annotations

import time

import p2pcompute as p2p
from p2pcompute.mlkit.data import block as B
from p2pcompute.mlkit.data.iteration import get_block, rebatch


class _SplitCoordinator:
    def __init__(self, ds, n: int):
        self.ds = ds
        self.n = n
        self.epoch = -1
        self.gen = None
        self.finished: set = set(range(n))
        self.consumer_epochs = [0] * n  # how many passes each consumer has started

    def start_epoch(self, index: int) -> int:
        epoch = self.consumer_epochs[index]
        self.consumer_epochs[index] += 1
        return epoch

    def next_block(self, index: int, epoch: int):
        """("block", [ref]) | ("end", None) | ("wait", None): the consumer retries after others finish."""
        if epoch > self.epoch:
            if len(self.finished) < self.n:
                return "wait", None
            self.epoch = epoch
            self.finished = set()
            self.gen = self.ds._iter_refs(progress=False)
        if epoch < self.epoch or index in self.finished:
            return "end", None
        try:
            ref, _ = next(self.gen)
        except StopIteration:
            self.finished.add(index)
            return "end", None
        return "block", [ref]

    def stats(self) -> str:
        return self.ds.stats()


class DataIterator:
    """One consumer's share of a `streaming_split`: `iter_batches`, `iter_rows`."""

    def __init__(self, coordinator, index: int):
        self._coord = coordinator
        self._index = index

    def _blocks(self):
        # The coordinator counts passes: this iterator may be a copy sent to another process.
        epoch = p2p.get(self._coord.start_epoch.remote(self._index))
        backoff_s = 0.01
        ahead = self._coord.next_block.remote(self._index, epoch)
        while True:
            kind, payload = p2p.get(ahead)
            if kind == "wait":
                time.sleep(backoff_s)  # the others are still on the previous epoch: ask again shortly
                backoff_s = min(0.5, backoff_s * 2)
                ahead = self._coord.next_block.remote(self._index, epoch)
                continue
            if kind == "end":
                return
            ahead = self._coord.next_block.remote(self._index, epoch)  # prefetch the next block's ref
            yield get_block(payload[0])

    def iter_batches(self, *, batch_size: int | None = 256, batch_format: str = "numpy", drop_last: bool = False,
                     prefetch_batches: int = 1, local_shuffle_buffer_size=None, local_shuffle_seed=None):
        return rebatch(self._blocks(), batch_size, batch_format, drop_last, local_shuffle_buffer_size,
                       local_shuffle_seed)

    def iter_rows(self):
        for block in self._blocks():
            yield from B.iter_rows(block)

    def stats(self) -> str:
        return p2p.get(self._coord.stats.remote())


class LocalIterator:
    """`Dataset.iterator()`: the same interface as a `DataIterator`, running in this process."""

    def __init__(self, ds):
        self._ds = ds

    def iter_batches(self, **kwargs):
        return self._ds.iter_batches(**kwargs)

    def iter_rows(self):
        return self._ds.iter_rows()

    def stats(self) -> str:
        return self._ds.stats()


def streaming_split(ds, n: int, equal: bool) -> list:
    if equal:
        # Exactly equal shares need every block's size up front: split a materialized dataset instead.
        return [s.iterator() for s in ds.split(n, equal=True)]
    coord = p2p.remote(_SplitCoordinator).remote(ds, n)
    return [DataIterator(coord, i) for i in range(n)]
