"""The object directory, as the client's user threads see it (re-exported from `ownership/directory.py`)."""

from p2pcompute.ownership.directory import (ERROR, INLINE, PENDING, STORED, ObjectTable, ObjectValue,  # noqa: F401
                                            deadline_of, load_value, timeout_error)
