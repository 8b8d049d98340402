"""Getting blocks to the consumer: fetching ahead on a thread, re-batching to exact sizes, local shuffles.

`fetch_blocks` turns the executor's (ref, meta) stream into block values, `prefetch` blocks ahead on a
background thread so the consumer's work overlaps the next fetch. `rebatch` cuts blocks into batches of
exactly `batch_size` rows across block boundaries (slices are views: no copy unless a batch spans blocks),
optionally through a seeded local shuffle buffer.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Iterator

import numpy as np

import p2pcompute as p2p
from p2pcompute.mlkit.data import block as B

_LOST_RETRY_S = 60.0


def get_block(ref):
    """A block's value. A block whose holder just died may be reported lost before its owner (this driver)
    has learnt of the death and re-run the task that made it: ask again for a while before giving up."""
    deadline = time.monotonic() + _LOST_RETRY_S
    backoff_s = 0.05
    while True:
        try:
            return p2p.get(ref)
        except p2p.errors.OwnerDiedError:
            raise
        except p2p.errors.ObjectLostError:
            if time.monotonic() > deadline:
                raise
            time.sleep(backoff_s)  # the rebuild starts once the death is declared (seconds): poll for it
            backoff_s = min(1.0, backoff_s * 2)


def fetch_blocks(refs: Iterator[tuple], prefetch: int) -> Iterator[dict]:
    """Values of the blocks, fetched `prefetch` blocks ahead on a thread (0: in the caller's thread)."""
    if prefetch <= 0:
        for ref, _ in refs:
            yield get_block(ref)
        return
    q: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()
    done = object()

    def pump():
        try:
            for ref, _ in refs:
                value = get_block(ref)
                while not stop.is_set():
                    try:
                        q.put((True, value), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((True, done))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer's thread
            q.put((False, exc))
        finally:
            refs.close()

    t = threading.Thread(target=pump, name="p2p-data-prefetch", daemon=True)
    t.start()
    try:
        while True:
            ok, value = q.get()
            if not ok:
                raise value
            if value is done:
                return
            yield value
    finally:
        stop.set()


def rebatch(blocks: Iterator[dict], batch_size: int | None, batch_format: str, drop_last: bool,
            shuffle_buffer: int | None = None, shuffle_seed: int | None = None) -> Iterator:
    """Blocks -> batches of exactly `batch_size` rows (None: one batch per block)."""
    rng = np.random.default_rng(shuffle_seed) if shuffle_buffer else None
    if batch_size is None:
        for block in blocks:
            if B.num_rows(block):
                yield B.to_batch(block, batch_format)
        return
    pending: list = []
    have = 0
    min_rows = max(batch_size, shuffle_buffer or 0)
    for block in blocks:
        n = B.num_rows(block)
        if not n:
            continue
        pending.append(block)
        have += n
        while have >= min_rows:
            buf = B.concat(pending)
            if rng is not None:
                buf = B.take_rows(buf, rng.permutation(have))
            yield B.to_batch(B.slice_block(buf, 0, batch_size), batch_format)
            rest = B.slice_block(buf, batch_size, have)
            have -= batch_size
            pending = [rest] if have else []
    if have:
        buf = B.concat(pending)
        if rng is not None:
            buf = B.take_rows(buf, rng.permutation(have))
        for start in range(0, have, batch_size):
            part = B.slice_block(buf, start, min(start + batch_size, have))
            if drop_last and B.num_rows(part) < batch_size:
                return
            yield B.to_batch(part, batch_format)
