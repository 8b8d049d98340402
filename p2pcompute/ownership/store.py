"""The shared-memory object store of one machine: one file per object in a private tmpfs directory.

Why a file per object rather than one arena: a reader maps an object's file read-only and numpy arrays
point straight into that mapping (zero copy). Freeing is `unlink`: POSIX keeps the pages alive for any
process that still has them mapped, so a reader can never see its memory reused under it, and no process
has to ask anyone before dropping a value. The peer accounts for sizes and decides what to spill; every
process on the machine may write a new object and read any object directly.

Spilling. Each store has a spill directory on disk, named in the store's `.spill` file. The peer moves the
oldest objects there when the store passes its threshold; a reader that misses an object in memory maps
the spilled file instead (the kernel pages it in on demand), so a spilled object needs no explicit restore.
A write that finds the memory store full (ENOSPC) goes straight to the spill directory: `put` never fails
for lack of shared memory while the disk has room.

Recycling large files. A fresh tmpfs file costs the writer the allocation, zeroing and first-touch fault of
every page: writing 100 MB into a new file takes about three times as long as copying it in memory. So the
peer, when it frees an object of at least `RECYCLE_MIN_BYTES`, moves its file into the store's `.pool`
directory (named `<size>.<object id>`) instead of unlinking it, and a writer of a large object renames the
pooled file closest in size into place and writes over pages that already exist. This must never change
memory a reader still sees, and after `unlink` readers could keep mapped pages for as long as they liked.
Every reader therefore takes a shared `flock` on the file before mapping it; the lock belongs to the open
file, which the mapping keeps open (Python's mmap holds a dup of the fd), so it lasts exactly as long as any
array into the object lives. The peer recycles a file only if it can take the lock exclusively at once (no
reader), and the writer takes it exclusively again after renaming it out of the pool; otherwise the file is
simply unlinked and the writer starts a fresh one. A reader that raced with the move into the pool sees its
file's inode no longer behind the object's name and reports the object as gone, as it would after unlink.
The pool's bytes are not objects: the peer's accounting reports them apart (`pooled`), caps them, drops them
first under memory pressure, and drops pooled files that stay unused for `POOL_IDLE_S`.

Both directories are created 0700, so only the user's own processes can read the objects.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import shutil
import tempfile
import time

from p2pcompute.errors import ObjectLostError
from p2pcompute.serialization import Serialized

_IOV_MAX = 512
_SPILL_MARK = ".spill"
POOL_DIR = ".pool"
RECYCLE_MIN_BYTES = 1 << 20  # below this a fresh file is cheap, and the pool would fill with tiny files
POOL_IDLE_S = 30.0


def default_store_root() -> str:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()


def create_store_dir(name: str, root: str | None = None, spill_dir: str | None = None) -> str:
    path = os.path.join(root or default_store_root(), name)
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)
    os.makedirs(os.path.join(path, POOL_DIR), mode=0o700, exist_ok=True)
    if spill_dir is not None:
        os.makedirs(spill_dir, mode=0o700, exist_ok=True)
        with open(os.path.join(path, _SPILL_MARK), "w") as f:
            f.write(spill_dir)
    return path


def remove_store_dir(path: str) -> None:
    spill = LocalStore(path).spill_dir
    shutil.rmtree(path, ignore_errors=True)
    if spill:
        shutil.rmtree(spill, ignore_errors=True)


class LocalStore:
    """File access to a store directory (and its spill directory), from any process on the machine."""

    def __init__(self, path: str):
        self.path = path
        self._spill: str | None = None
        self._spill_known = False

    @property
    def spill_dir(self) -> str | None:
        if not self._spill_known:
            try:
                with open(os.path.join(self.path, _SPILL_MARK)) as f:
                    self._spill = f.read().strip() or None
            except OSError:
                self._spill = None
            self._spill_known = True
        return self._spill

    def file_of(self, object_id: str) -> str:
        return os.path.join(self.path, object_id)

    def spilled_file_of(self, object_id: str) -> str | None:
        spill = self.spill_dir
        return os.path.join(spill, object_id) if spill else None

    @property
    def pool_path(self) -> str:
        return os.path.join(self.path, POOL_DIR)

    # ---- writing ------------------------------------------------------------------------------------

    def write(self, object_id: str, value: Serialized) -> int:
        """Write a new object; returns its size in bytes. The data is copied exactly once."""
        parts = value.blob_parts()
        size = value.nbytes
        final = self.file_of(object_id)
        try:
            self._write_parts(final, parts, size, self._take_pooled(final, size))
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            # Shared memory is full. Pooled files are only spare pages: give them back and try once more.
            if self.drain_pool():
                try:
                    self._write_parts(final, parts, size, None)
                    return size
                except OSError as again:
                    if again.errno != errno.ENOSPC:
                        raise
            spilled = self.spilled_file_of(object_id)
            if spilled is None:
                raise
            # Still full: the object starts life spilled rather than failing the put.
            self._write_parts(spilled, parts, size, None)
        return size

    def _take_pooled(self, final: str, size: int) -> int | None:
        """Rename the best-fitting pooled file to `final.part`, locked for us alone; its fd, or None."""
        if size < RECYCLE_MIN_BYTES:
            return None
        try:
            names = os.listdir(self.pool_path)
        except OSError:
            return None
        fits = []
        for name in names:
            pooled = _pooled_size(name)
            if pooled is not None and size // 2 <= pooled <= size * 2:
                fits.append((abs(pooled - size), name))
        tmp = final + ".part"
        for _gap, name in sorted(fits):
            try:
                os.rename(os.path.join(self.pool_path, name), tmp)
            except FileNotFoundError:
                continue  # another writer took it first
            fd = os.open(tmp, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                # Someone still maps it (cannot happen through the peer's checks, but never overwrite a reader).
                os.close(fd)
                _unlink(tmp)
                continue
            return fd
        return None

    @staticmethod
    def _write_parts(final: str, parts: list, size: int, fd: int | None) -> None:
        tmp = final + ".part"
        if fd is None:
            fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        try:
            if os.fstat(fd).st_size != size:
                os.ftruncate(fd, size)
            offset = 0
            for start in range(0, len(parts), _IOV_MAX):
                chunk = parts[start: start + _IOV_MAX]
                want = sum(memoryview(p).nbytes for p in chunk)
                done = 0
                while done < want:  # pwritev may write less than asked (signals, huge writes)
                    rest = chunk if done == 0 else _skip(chunk, done)
                    done += os.pwritev(fd, rest, offset + done)
                offset += want
        except BaseException:
            os.close(fd)
            _unlink(tmp)
            raise
        os.close(fd)
        # Readers find an object only once it is complete.
        os.rename(tmp, final)

    # ---- reading ------------------------------------------------------------------------------------

    def open_fd(self, object_id: str) -> int:
        """An fd on the object's file, in memory or spilled; ObjectLostError if neither exists."""
        try:
            return os.open(self.file_of(object_id), os.O_RDONLY)
        except FileNotFoundError:
            pass
        spilled = self.spilled_file_of(object_id)
        if spilled is not None:
            try:
                return os.open(spilled, os.O_RDONLY)
            except FileNotFoundError:
                pass
        raise ObjectLostError(f"object {object_id} is not in the local store {self.path}")

    def read(self, object_id: str) -> memoryview:
        """Map an object read-only. The mapping lives as long as any view of it does."""
        fd = self.open_fd(object_id)
        try:
            # The shared lock lives with the open file, which the mapping keeps open: while any view of this
            # object exists, the peer will not recycle its file (see the module docstring).
            fcntl.flock(fd, fcntl.LOCK_SH)
            st = os.fstat(fd)
            if st.st_size == 0:
                return memoryview(b"")
            if not _still_named(self.file_of(object_id), st) and not _still_named(self.spilled_file_of(object_id), st):
                raise ObjectLostError(f"object {object_id} was freed while being read from {self.path}")
            return memoryview(mmap.mmap(fd, st.st_size, prot=mmap.PROT_READ))
        finally:
            os.close(fd)

    def exists(self, object_id: str) -> bool:
        if os.path.exists(self.file_of(object_id)):
            return True
        spilled = self.spilled_file_of(object_id)
        return spilled is not None and os.path.exists(spilled)

    def is_spilled(self, object_id: str) -> bool:
        spilled = self.spilled_file_of(object_id)
        return spilled is not None and os.path.exists(spilled) and not os.path.exists(self.file_of(object_id))

    # ---- spilling and freeing (the peer) --------------------------------------------------------------

    def spill(self, object_id: str) -> bool:
        """Move an object from memory to the spill directory. Readers that have it mapped keep their pages."""
        spilled = self.spilled_file_of(object_id)
        src = self.file_of(object_id)
        if spilled is None or not os.path.exists(src):
            return False
        tmp = spilled + ".part"
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o600)
        os.rename(tmp, spilled)
        _unlink(src)
        return True

    def recycle(self, object_id: str) -> int:
        """Move a freed object's file into the pool if it is large and nobody maps it; its size, or 0 if it
        was not pooled (the caller then deletes the object as usual)."""
        path = self.file_of(object_id)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return 0
        try:
            size = os.fstat(fd).st_size
            if size < RECYCLE_MIN_BYTES:
                return 0
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return 0  # a reader still has it mapped: unlink, and POSIX keeps its pages
            try:
                os.rename(path, os.path.join(self.pool_path, f"{size}.{object_id}"))
            except FileNotFoundError:
                os.makedirs(self.pool_path, mode=0o700, exist_ok=True)  # a store made before pools existed
                os.rename(path, os.path.join(self.pool_path, f"{size}.{object_id}"))
            return size
        finally:
            os.close(fd)

    def pooled(self) -> list[tuple[str, int, float]]:
        """(name, size in bytes, time it was pooled) of each pooled file, oldest first."""
        out = []
        try:
            names = os.listdir(self.pool_path)
        except OSError:
            return out
        for name in names:
            size = _pooled_size(name)
            if size is None:
                continue
            try:
                out.append((name, size, os.stat(os.path.join(self.pool_path, name)).st_ctime))  # rename sets ctime
            except FileNotFoundError:
                pass  # taken by a writer meanwhile
        out.sort(key=lambda e: e[2])
        return out

    def drain_pool(self, keep_bytes: int = 0, idle_s: float | None = None) -> int:
        """Unlink pooled files, oldest first, until at most `keep_bytes` remain (and, with `idle_s`, every
        file pooled longer ago than that). Returns the bytes released."""
        pooled = self.pooled()
        total = sum(size for _n, size, _t in pooled)
        now = time.time()
        released = 0
        for name, size, pooled_at in pooled:
            if total <= keep_bytes and (idle_s is None or now - pooled_at < idle_s):
                continue
            if _unlink(os.path.join(self.pool_path, name)):
                released += size
            total -= size
        return released

    def size_in_memory(self, object_id: str) -> int | None:
        try:
            return os.stat(self.file_of(object_id)).st_size
        except FileNotFoundError:
            return None

    def drain_one(self, name: str) -> bool:
        return _unlink(os.path.join(self.pool_path, name))

    def delete(self, object_id: str) -> bool:
        gone = _unlink(self.file_of(object_id))
        spilled = self.spilled_file_of(object_id)
        if spilled is not None:
            gone = _unlink(spilled) or gone
        return gone


def _pooled_size(name: str) -> int | None:
    head, _, rest = name.partition(".")
    return int(head) if rest and head.isdigit() else None


def _still_named(path: str | None, st: os.stat_result) -> bool:
    """Is the file we opened still the one behind `path` (not moved into the pool after we opened it)?"""
    if path is None:
        return False
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False
    return (now.st_ino, now.st_dev) == (st.st_ino, st.st_dev)


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


def _skip(parts: list, nbytes: int) -> list:
    out = []
    for p in parts:
        n = memoryview(p).nbytes
        if nbytes >= n:
            nbytes -= n
            continue
        out.append(memoryview(p)[nbytes:] if nbytes else p)
        nbytes = 0
    return out
