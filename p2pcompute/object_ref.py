"""`ObjectRef`: a future for a value that a task returns or `put` stores.

A ref names the object and the process that owns it. Every live `ObjectRef` instance counts as a reference
in its process (created and deleted here, counted by the runtime's I/O thread), and pickling a ref into a
task argument or a value records it so its owner learns of the new borrower.
"""

from __future__ import annotations

from typing import Any, Callable

from p2pcompute import serialization

# Set by the runtime of this process: hooks that queue reference-count operations for its I/O thread.
# Appending to a deque is thread-safe and cheap, which matters: refs are made and dropped on every call.
_on_created: Callable[[tuple], None] | None = None
_OP_INC = 1
_OP_DEC = 2


def install_hooks(append: Callable[[tuple], None] | None) -> None:
    global _on_created
    _on_created = append


class ObjectRef:
    """A reference to an object owned by some process of the cluster; pass it around, `get` its value."""

    __slots__ = ("_id", "_owner", "__weakref__")

    def __init__(self, object_id: str, owner_addr: str):
        self._id = object_id
        self._owner = owner_addr
        hook = _on_created
        if hook is not None:
            hook((_OP_INC, object_id, owner_addr))

    def __del__(self):
        hook = _on_created
        if hook is not None:
            try:
                hook((_OP_DEC, self._id))
            except Exception:
                pass  # interpreter shutdown

    def __reduce__(self):
        serialization.record_ref(self._id, self._owner)
        return (_rebuild, (self._id, self._owner))

    @property
    def id(self) -> str:
        return self._id

    def hex(self) -> str:
        return self._id

    def owner_address(self) -> str:
        return self._owner

    def __repr__(self) -> str:
        return f"ObjectRef({self._id})"

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, ObjectRef) and other._id == self._id

    def __hash__(self) -> int:
        return hash(self._id)

    def future(self):
        """A `concurrent.futures.Future` resolved with the value (or its error)."""
        from p2pcompute.state import runtime
        return runtime().future_of(self)

    def as_future(self):
        """An `asyncio.Future` for the value, on the running event loop (Ray's `ObjectRef.as_future()`)."""
        import asyncio
        return asyncio.wrap_future(self.future())

    def __await__(self):
        return self.as_future().__await__()

    def task_id(self) -> str | None:
        """The task that makes this object (None for an object made by `put`)."""
        parts = self._id.split(".")
        return ".".join(parts[:2]) if len(parts) == 3 else None


# Ray's older name for the same thing.
ObjectID = ObjectRef


def _rebuild(object_id: str, owner_addr: str) -> ObjectRef:
    return ObjectRef(object_id, owner_addr)
