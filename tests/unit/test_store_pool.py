"""Recycling freed object files: reuse is real, readers never see their memory reused, accounting stays honest."""

from __future__ import annotations

import gc
import os

import numpy as np
import pytest

from p2pcompute.errors import ObjectLostError
from p2pcompute.ownership.store import POOL_DIR, RECYCLE_MIN_BYTES, LocalStore, create_store_dir, remove_store_dir
from p2pcompute.runtime.store_manager import StoreManager
from p2pcompute.serialization import deserialize, serialize

MB = 1 << 20


@pytest.fixture
def store(tmp_path):
    path = create_store_dir("store", root=str(tmp_path), spill_dir=str(tmp_path / "spill"))
    yield LocalStore(path)
    remove_store_dir(path)


def _put(store: LocalStore, manager: StoreManager | None, oid: str, arr) -> int:
    size = store.write(oid, serialize(arr))
    if manager is not None:
        manager.sealed(oid, size)
    return size


def _pool(store: LocalStore) -> list[str]:
    return sorted(os.listdir(os.path.join(store.path, POOL_DIR)))


def test_a_freed_large_file_is_reused_by_the_next_write_of_a_similar_size(store):
    manager = StoreManager(store, capacity=1 << 30)
    _put(store, manager, "a", np.full(4 * MB // 8, 1.0))
    inode = os.stat(store.file_of("a")).st_ino
    manager.free("a")
    assert manager.used == 0 and not store.exists("a")
    assert len(_pool(store)) == 1 and manager.summary()["pooled"] >= 4 * MB
    _put(store, manager, "b", np.full(3 * MB // 8, 2.0))  # smaller, within the size class: reused, truncated
    assert os.stat(store.file_of("b")).st_ino == inode
    assert _pool(store) == []
    got = deserialize(store.read("b"))
    assert got.shape == (3 * MB // 8,) and (got == 2.0).all()
    assert os.stat(store.file_of("b")).st_size == manager.in_memory["b"]


def test_a_file_still_mapped_by_a_reader_is_never_recycled(store):
    manager = StoreManager(store, capacity=1 << 30)
    _put(store, manager, "a", np.full(2 * MB // 8, 7.0))
    held = deserialize(store.read("a"))  # an array pointing into the mapping, its ref already dropped
    manager.free("a")
    assert _pool(store) == [] and not store.exists("a")
    _put(store, manager, "b", np.full(2 * MB // 8, 9.0))
    assert (held == 7.0).all()  # unlinked, not reused: the reader's pages are untouched
    del held
    gc.collect()
    manager.free("b")  # nobody maps b: pooled
    assert len(_pool(store)) == 1


def test_the_lock_lasts_as_long_as_any_view_of_the_mapping(store):
    manager = StoreManager(store, capacity=1 << 30)
    _put(store, manager, "a", np.arange(2 * MB // 8, dtype=np.float64))
    view = store.read("a")
    part = view[100:200]
    del view
    gc.collect()
    manager.free("a")
    assert _pool(store) == []  # a slice still keeps the mapping, and so the lock
    del part


def test_small_objects_are_unlinked_not_pooled(store):
    manager = StoreManager(store, capacity=1 << 30)
    _put(store, manager, "s", np.zeros(RECYCLE_MIN_BYTES // 16))
    manager.free("s")
    assert _pool(store) == [] and manager.used == 0


def test_the_pool_is_capped_in_files_and_bytes(store):
    manager = StoreManager(store, capacity=1 << 30, pool_max_bytes=5 * MB, pool_max_files=2)
    for i in range(4):
        _put(store, manager, f"o{i}", np.full(2 * MB // 8, float(i)))
    for i in range(4):
        manager.free(f"o{i}")
        pooled = store.pooled()
        assert len(pooled) <= 2 and sum(s for _n, s, _t in pooled) <= 5 * MB
    assert manager.used == 0
    big = StoreManager(store, capacity=1 << 30, pool_max_bytes=1 * MB)
    _put(store, big, "huge", np.zeros(2 * MB // 8))
    big.free("huge")  # larger than the whole pool: unlinked
    assert not any(n.endswith(".huge") for n in _pool(store))


def test_memory_pressure_drains_the_pool_before_spilling(store):
    manager = StoreManager(store, capacity=10 * MB, spill_threshold=0.8, spill_target=0.5, pool_max_bytes=4 * MB)
    _put(store, manager, "a", np.zeros(3 * MB // 8))
    manager.free("a")
    assert manager.pooled_bytes > 0
    _put(store, manager, "b", np.ones(5 * MB // 8))  # too big for a's file: a fresh file
    _put(store, manager, "c", np.ones(2 * MB // 8))
    manager.maybe_spill()
    assert _pool(store) == [] and manager.pooled_bytes == 0


def test_a_reader_that_lost_the_race_with_recycling_sees_the_object_gone(store):
    manager = StoreManager(store, capacity=1 << 30)
    _put(store, manager, "a", np.full(2 * MB // 8, 1.0))
    fd = os.open(store.file_of("a"), os.O_RDONLY)  # opened, as a reader would, just before the free
    try:
        manager.free("a")
        assert len(_pool(store)) == 1
        store.open_fd = lambda oid: os.dup(fd)  # the reader continues with the fd it already had
        with pytest.raises(ObjectLostError):
            store.read("a")
    finally:
        os.close(fd)


def test_draining_releases_every_pooled_file(store):
    manager = StoreManager(store, capacity=1 << 30)
    _put(store, manager, "a", np.zeros(2 * MB // 8))
    manager.free("a")
    assert store.drain_pool() >= 2 * MB and _pool(store) == []


def test_a_free_that_overtakes_the_seal_still_recycles_and_counts_nothing(store):
    manager = StoreManager(store, capacity=1 << 30)
    size = _put(store, None, "a", np.full(2 * MB // 8, 1.0))  # written; its ObjectSealed not yet arrived
    manager.free("a")
    assert len(_pool(store)) == 1 and not store.exists("a")
    manager.sealed("a", size)  # the late seal of a freed object is ignored
    assert manager.used == 0 and manager.in_memory == {}


_READER = """
import sys
from p2pcompute.ownership.store import LocalStore
from p2pcompute.serialization import deserialize
arr = deserialize(LocalStore(sys.argv[1]).read(sys.argv[2]))
print(float(arr[0]), flush=True)
sys.stdin.readline()
print(float(arr[0]), float(arr[-1]), flush=True)
"""


def test_a_reader_in_another_process_keeps_its_pages_until_it_lets_go(store):
    import subprocess
    import sys
    manager = StoreManager(store, capacity=1 << 30)
    _put(store, manager, "a", np.full(2 * MB // 8, 5.0))
    reader = subprocess.Popen([sys.executable, "-c", _READER, store.path, "a"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().strip() == "5.0"  # mapped, and holding it
        manager.free("a")
        assert _pool(store) == []  # its file is unlinked, not pooled
        _put(store, manager, "b", np.full(2 * MB // 8, 6.0))
        reader.stdin.write("\n")
        reader.stdin.flush()
        assert reader.stdout.readline().split() == ["5.0", "5.0"]
    finally:
        reader.stdin.close()
        reader.wait(timeout=30)
    manager.free("b")  # its reader never existed: pooled
    assert len(_pool(store)) == 1
