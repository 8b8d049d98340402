"""Driving the client's loop from a user thread (drivers only), and Ctrl-C while one does.

Theory of operation. A sync call through the I/O thread crosses two extra threads each way (user thread ->
I/O thread -> libzmq, and back), and on a busy machine each crossing waits for a time slice. So a driver's
user thread about to block on a value runs the loop itself: it takes the loop lock, sends what is queued and
polls the sockets until its value is ready (`_block`, `_drive`). Whoever runs a pass holds the loop lock:
the owner core and the sockets are only ever touched under it, by one thread at a time.

The I/O thread, asked to, parks (`_park`: it waits on the waker only) and takes the loop back when an
operation needs it, or when no user thread has driven the loop for _PARK_IDLE_S. While it is parked, a task
submitted is sent by the next pass — the submitting thread's own `get` (the usual `get(f.remote())`), a
thread driving the loop now (woken), or the I/O thread when it takes the loop back — so a burst of
submissions still leaves in batches; other operations (`call_soon`) are carried out at once by the calling
thread (`kick`). A thread that may not drive (see below) wakes the I/O thread and waits as before.

Ctrl-C. Python raises KeyboardInterrupt in the main thread at any bytecode, which in the middle of the core's
work would leave it half-done (a reply half-applied: its task never finishes). A driver installs
`_on_sigint` in place of Python's handler: while the main thread holds, or is taking, the loop lock, the
interrupt is remembered and raised once the lock is given back (`_after_drive`). A program with a SIGINT
handler of its own keeps it, and its main thread does not drive the loop. An interrupt landing in a ref's
finalizer, where Python would drop the exception, is delivered again a moment later.
"""

from __future__ import annotations

import _signal
import _thread
import logging
import select
import signal
import threading
import time

log = logging.getLogger("p2pcompute.client")

# A parked I/O thread takes the loop back once no user thread has driven it for this long (seconds); it
# looks that often while nobody drives, and every _PARK_BUSY_MS while a user thread drives.
_PARK_IDLE_S = 0.002
_PARK_BUSY_MS = 20


class LoopDriving:
    """Part of `ClientRuntime`: its user threads running the loop (see the module's docstring)."""

    def _init_driving(self, kind: str, enabled: bool) -> None:
        self._loop_lock = threading.Lock()
        self._direct = kind == "driver" and enabled
        self._parked = False           # the I/O thread has handed the loop to user threads
        self._park_wanted = False      # a user thread asked it to
        self._driver: int | None = None  # the thread id of the user thread running passes now
        self._last_drive = 0.0
        self._interrupt_pending = False  # Ctrl-C while the main thread was in a pass (see _on_sigint)
        self._defer_main = False  # the main thread holds, or is taking, the loop lock: Ctrl-C waits
        self._main_ident = threading.main_thread().ident

    def kick(self) -> None:
        """Operations were queued: wake the I/O thread — or, while it is parked, carry them out now on this
        thread (see the module's docstring)."""
        me = threading.get_ident()
        if self._parked and self._driver != me and self._may_drive():
            # (A thread already in a pass — an operation queueing another — only wakes its own next poll.)
            main = me == self._main_ident
            if main:
                self._defer_main = True  # from before the lock is taken until after it is given back
            try:
                if self._loop_lock.acquire(blocking=False):
                    try:
                        self._driver = me
                        try:
                            self._send_queued()
                        finally:
                            self._driver = None
                    finally:
                        self._loop_lock.release()
                    return
            finally:
                if main:
                    self._defer_main = False
                    self._after_drive()
        self.waker.wake()

    def _may_drive(self) -> bool:
        if not self._direct:
            return False
        if threading.get_ident() == self._main_ident:
            return _getsignal(_SIGINT) is _on_sigint
        return True

    def _park(self) -> None:
        """I/O thread: leave the loop to user threads until an operation needs it or they stop driving."""
        poller = select.poll()
        poller.register(self.waker.fd, select.POLLIN)
        self._parked = True
        try:
            while self._running and self._park_wanted:
                if poller.poll(_PARK_BUSY_MS if self._driver is not None else _PARK_IDLE_S * 1000):
                    return  # an operation was queued for the loop
                if self._driver is None and time.monotonic() - self._last_drive > _PARK_IDLE_S:
                    return
        finally:
            self._parked = False
            self._park_wanted = False

    def _block(self, waiter_lock, timeout: float | None) -> bool:
        """User thread: wait until `waiter_lock` is released (an object it waits for is ready) or `timeout`
        seconds pass; drive the loop meanwhile if this thread may. Returns whether it was released."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._may_drive():
            if self._parked or self._park_wanted:
                self._park_wanted = False
                self.waker.wake()  # someone must poll for this thread: the I/O thread
            return waiter_lock.acquire(timeout=-1 if timeout is None else timeout)
        lock = self._loop_lock
        main = threading.get_ident() == self._main_ident
        asked = False
        while True:
            if main:
                self._defer_main = True  # from before the lock is taken until after it is given back
            try:
                if lock.acquire(blocking=False) or (asked and lock.acquire(timeout=0.002)):
                    try:
                        return self._drive(waiter_lock, deadline)
                    finally:
                        lock.release()
            finally:
                if main:
                    self._defer_main = False
                    self._after_drive()
            # The I/O thread has the loop: ask it to park, and wait for the value or the loop meanwhile.
            asked = True
            self._park_wanted = True
            self.waker.wake()
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return waiter_lock.acquire(blocking=False)
            if waiter_lock.acquire(timeout=0.002 if left is None else min(0.002, left)):
                return True

    def _drive(self, waiter_lock, deadline: float | None) -> bool:
        """Run passes until `waiter_lock` is released or the deadline passes (under `_loop_lock`)."""
        self._driver = threading.get_ident()
        try:
            self._send_queued()
            while True:
                if waiter_lock.acquire(blocking=False):
                    return True
                if not self._running or self._interrupt_pending:
                    return False
                timeout_ms = self._poll_timeout_ms()
                if deadline is not None:
                    left_ms = (deadline - time.monotonic()) * 1000
                    if left_ms <= 0:
                        return False
                    timeout_ms = min(timeout_ms, left_ms)
                self._pass(timeout_ms)
        except Exception:
            log.exception("p2pcompute loop failed on a user thread")
            self.core.fail_everything("the p2pcompute loop failed; see the log above")
            raise
        finally:
            self._driver = None
            self._last_drive = time.monotonic()

    def _send_queued(self) -> None:
        """Carry out what user threads queued, and send it (under `_loop_lock`)."""
        self.transport.hold()
        self._drain_ops()
        self.transport.flush()

    def _after_drive(self) -> None:
        """Main thread, out of the loop: raise the Ctrl-C that came while it was in (see _on_sigint)."""
        if self._interrupt_pending:
            self._interrupt_pending = False
            raise KeyboardInterrupt


_sigint_runtime = None  # the ClientRuntime whose main thread may drive the loop
_getsignal = _signal.getsignal  # signal.getsignal makes an enum of the handler: 20 us a call, measured
_SIGINT = int(signal.SIGINT)


def _on_sigint(signum, frame):
    """SIGINT handler of a driver: as Python's own (KeyboardInterrupt), except while the main thread is in a
    pass of the loop, where the interrupt is raised as soon as the pass ends (see `LoopDriving._block`)."""
    rt = _sigint_runtime
    if rt is not None:
        if rt._defer_main:
            rt._interrupt_pending = True
            rt.waker.wake()  # a pass polling for a long task returns at once
            return
        if _in_finalizer(frame):
            # Python drops an exception raised in __del__ ("Exception ignored in ..."): the interrupt would be
            # lost (and the ref's release with it). Deliver it again a moment later, from another thread (from
            # this one the handler would run again at once, still inside the finalizer).
            global _redelivering
            if not _redelivering:
                _redelivering = True
                threading.Thread(target=_redeliver, args=(signum,), daemon=True).start()
            return
        rt._interrupt_pending = False  # raised now: not a second time later
    signal.default_int_handler(signum, frame)


_FINALIZERS: frozenset = frozenset()
_redelivering = False


def _in_finalizer(frame) -> bool:
    codes = _finalizers()
    while frame is not None:
        if frame.f_code in codes:
            return True
        frame = frame.f_back
    return False


def _redeliver(signum: int) -> None:
    global _redelivering
    time.sleep(0.002)  # the main thread leaves the finalizer (if not, the handler defers again)
    _redelivering = False
    _thread.interrupt_main(signum)


def _finalizers() -> frozenset:
    global _FINALIZERS
    if not _FINALIZERS:
        from p2pcompute.actor import ActorHandle
        from p2pcompute.object_ref import ObjectRef
        _FINALIZERS = frozenset((ObjectRef.__del__.__code__, ActorHandle.__del__.__code__))
    return _FINALIZERS


def install_sigint(rt) -> None:
    """Defer Ctrl-C past the loop's passes, if the program left SIGINT to Python (else the main thread does
    not drive the loop: its own handler might raise anywhere)."""
    global _sigint_runtime
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        _sigint_runtime = rt
        signal.signal(signal.SIGINT, _on_sigint)


def uninstall_sigint(rt) -> None:
    global _sigint_runtime
    if _sigint_runtime is rt:
        _sigint_runtime = None
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is _on_sigint:
            signal.signal(signal.SIGINT, signal.default_int_handler)
