"""Output of user code in workers: every line goes to the job's driver, prefixed with who printed it.

`sys.stdout` and `sys.stderr` of a worker are `LineForwarder`s. Whole lines are prefixed with the running
task's (or actor's) name and the worker's pid and queued in one `OutputBuffer`. Two threads drain it:
- the executing thread, right before it sends a task's reply, through the same connection as the reply
  when the owner is the driver — so a line printed before `return` reaches the driver before the result;
- the I/O thread, on every loop, for lines printed outside tasks (background threads, async actors).
A partial line is flushed when the task that printed it ends, so it is neither lost nor glued to the next
task's output.
"""

from __future__ import annotations

import contextvars
import io
import os
import threading

# The task running in this thread (or asyncio task): who printed a line, and where it goes.
current: contextvars.ContextVar = contextvars.ContextVar("p2p_current_task", default=None)


class Running:
    __slots__ = ("task_id", "label", "owner_addr", "name")

    def __init__(self, task_id: str, label: str, owner_addr: str, name: str):
        self.task_id = task_id
        self.label = label
        self.owner_addr = owner_addr
        self.name = name


class OutputBuffer:
    """Prefixed lines waiting to be sent to the driver, in print order.

    Lines of the task running on the main thread are kept apart from all others: only the main thread sends
    them (before its reply), while the I/O thread sends the rest. Mixing the two would let the I/O thread
    carry a task's last lines on another connection than its reply, and overtake neither reliably.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._task_lines: list[tuple[str, str]] = []
        self._other_lines: list[tuple[str, str]] = []
        self.driver_addr: str | None = None
        self.last_label = "worker"

    def add(self, stream: str, lines: list[str], task_thread: bool) -> None:
        with self._lock:
            target = self._task_lines if task_thread else self._other_lines
            target.extend((stream, line) for line in lines)

    def take(self, task_thread: bool) -> list[tuple[str, list[str]]]:
        """Waiting lines of one kind, grouped into runs of one stream (order kept)."""
        with self._lock:
            if task_thread:
                lines, self._task_lines = self._task_lines, []
            else:
                lines, self._other_lines = self._other_lines, []
        batches: list[tuple[str, list[str]]] = []
        for stream, line in lines:
            if batches and batches[-1][0] == stream:
                batches[-1][1].append(line)
            else:
                batches.append((stream, [line]))
        return batches

    def has_other(self) -> bool:
        return bool(self._other_lines)

    def has_task(self) -> bool:
        return bool(self._task_lines)


class LineForwarder(io.TextIOBase):
    def __init__(self, buffer: OutputBuffer, stream: str, fallback, on_line=None):
        self.buffer = buffer
        self.stream = stream
        self.fallback = fallback
        self.on_line = on_line  # wakes the I/O thread
        self._partial = ""
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        with self._lock:
            self._partial += text
            if "\n" not in self._partial:
                return len(text)
            *lines, self._partial = self._partial.split("\n")
        self._emit(lines)
        return len(text)

    def flush(self) -> None:
        pass  # whole lines only; a partial line waits for its newline or for the end of its task

    def end_of_task(self) -> None:
        if not self._partial:  # nearly always: nothing half-printed, no lock needed
            return
        with self._lock:
            lines, self._partial = ([self._partial] if self._partial else []), ""
        if lines:
            self._emit(lines)

    def _emit(self, lines: list[str]) -> None:
        cur = current.get()
        label = cur.label if cur is not None else self.buffer.last_label
        if self.buffer.driver_addr is None:
            self.fallback.write("".join(line + "\n" for line in lines))
            self.fallback.flush()
            return
        prefix = f"({label} pid={os.getpid()}) "
        task_thread = cur is not None and threading.current_thread() is threading.main_thread()
        self.buffer.add(self.stream, [prefix + line for line in lines], task_thread)
        if self.on_line is not None and not task_thread:
            self.on_line()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self.fallback.fileno()
