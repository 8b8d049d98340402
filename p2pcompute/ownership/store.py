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

Both directories are created 0700, so only the user's own processes can read the objects.
"""

from __future__ import annotations

import errno
import mmap
import os
import shutil
import tempfile

from p2pcompute.errors import ObjectLostError
from p2pcompute.serialization import Serialized

_IOV_MAX = 512
_SPILL_MARK = ".spill"


def default_store_root() -> str:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()


def create_store_dir(name: str, root: str | None = None, spill_dir: str | None = None) -> str:
    path = os.path.join(root or default_store_root(), name)
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)
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

    # ---- writing ------------------------------------------------------------------------------------

    def write(self, object_id: str, value: Serialized) -> int:
        """Write a new object; returns its size in bytes. The data is copied exactly once."""
        parts = value.blob_parts()
        size = value.nbytes
        try:
            self._write_parts(self.file_of(object_id), parts, size)
        except OSError as exc:
            spilled = self.spilled_file_of(object_id)
            if exc.errno != errno.ENOSPC or spilled is None:
                raise
            # Shared memory is full: the object starts life spilled rather than failing the put.
            self._write_parts(spilled, parts, size)
        return size

    @staticmethod
    def _write_parts(final: str, parts: list, size: int) -> None:
        tmp = final + ".part"
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        try:
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
            size = os.fstat(fd).st_size
            if size == 0:
                return memoryview(b"")
            return memoryview(mmap.mmap(fd, size, prot=mmap.PROT_READ))
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

    def delete(self, object_id: str) -> bool:
        gone = _unlink(self.file_of(object_id))
        spilled = self.spilled_file_of(object_id)
        if spilled is not None:
            gone = _unlink(spilled) or gone
        return gone


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
