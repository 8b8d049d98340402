"""The shared-memory object store of one machine: one file per object in a private tmpfs directory.

Why a file per object rather than one arena: a reader maps an object's file read-only and numpy arrays
point straight into that mapping (zero copy). Freeing is `unlink`: POSIX keeps the pages alive for any
process that still has them mapped, so a reader can never see its memory reused under it, and no process
has to ask anyone before dropping a value. The peer accounts for sizes and decides what to spill; every
process on the machine may write a new object and read any object directly.

The directory is created 0700 so only the user's own processes can read the objects.
"""

from __future__ import annotations

import mmap
import os
import shutil
import tempfile

from p2pcompute.errors import ObjectLostError
from p2pcompute.serialization import Serialized

_IOV_MAX = 512


def default_store_root() -> str:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()


def create_store_dir(name: str, root: str | None = None) -> str:
    path = os.path.join(root or default_store_root(), name)
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def remove_store_dir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


class LocalStore:
    """File access to a store directory. Used by the peer (accounting, spilling) and by every local client."""

    def __init__(self, path: str):
        self.path = path

    def file_of(self, object_id: str) -> str:
        return os.path.join(self.path, object_id)

    def write(self, object_id: str, value: Serialized) -> int:
        """Write a new object; returns its size in bytes. The data is copied exactly once."""
        parts = value.blob_parts()
        size = value.nbytes
        tmp = self.file_of(object_id) + ".part"
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, size)
            offset = 0
            for start in range(0, len(parts), _IOV_MAX):
                chunk = parts[start: start + _IOV_MAX]
                want = sum(memoryview(p).nbytes for p in chunk)
                done = 0
                while done < want:  # pwritev may write less than asked (signals, huge writes)
                    if done == 0:
                        n = os.pwritev(fd, chunk, offset)
                    else:
                        rest = _skip(chunk, done)
                        n = os.pwritev(fd, rest, offset + done)
                    done += n
                offset += want
        finally:
            os.close(fd)
        # Readers find an object only once it is complete.
        os.rename(tmp, self.file_of(object_id))
        return size

    def write_bytes(self, object_id: str, data: bytes | memoryview) -> int:
        tmp = self.file_of(object_id) + ".part"
        with open(tmp, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o600)
        os.rename(tmp, self.file_of(object_id))
        return len(data)

    def read(self, object_id: str) -> memoryview:
        """Map an object read-only. The mapping lives as long as any view of it does."""
        try:
            fd = os.open(self.file_of(object_id), os.O_RDONLY)
        except FileNotFoundError:
            raise ObjectLostError(f"object {object_id} is not in the local store {self.path}") from None
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                return memoryview(b"")
            return memoryview(mmap.mmap(fd, size, prot=mmap.PROT_READ))
        finally:
            os.close(fd)

    def exists(self, object_id: str) -> bool:
        return os.path.exists(self.file_of(object_id))

    def size_of(self, object_id: str) -> int:
        try:
            return os.stat(self.file_of(object_id)).st_size
        except FileNotFoundError:
            return -1

    def delete(self, object_id: str) -> bool:
        try:
            os.unlink(self.file_of(object_id))
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
