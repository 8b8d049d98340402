"""A progress bar for waiting on many refs: `progress(refs)` returns what `get(refs)` would, drawing a bar
on the terminal while results arrive.

It waits with `wait(num_returns=...)` in growing steps instead of one `get`, so the bar moves as tasks
finish, in any order, and the values come back in the order of `refs`. The bar is drawn only when the
output is a terminal (or `force=True`): logs and pipes stay clean. Errors raise as `get` raises them.
"""

from __future__ import annotations

import sys
import time

BAR_WIDTH = 30
REDRAW_EVERY_S = 0.1


def render(done: int, total: int, elapsed_s: float, desc: str = "", width: int = BAR_WIDTH) -> str:
    """One line of the bar: `desc [#####.....] 12/40 30% 1.2s`, with a rough time left once known."""
    frac = done / total if total else 1.0
    filled = int(round(frac * width))
    line = f"{desc + ' ' if desc else ''}[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {frac:4.0%} " \
           f"{elapsed_s:.1f}s"
    if 0 < done < total:
        line += f" (~{elapsed_s / done * (total - done):.0f}s left)"
    return line


def progress(refs, *, desc: str = "", timeout: float | None = None, file=None, force: bool = False) -> list:
    from p2pcompute import api
    from p2pcompute.errors import GetTimeoutError, InvalidArgumentError
    from p2pcompute.object_ref import ObjectRef
    single = type(refs) is ObjectRef
    items = [refs] if single else list(refs) if isinstance(refs, (list, tuple)) else None
    if items is None or not all(type(r) is ObjectRef for r in items):
        raise InvalidArgumentError("progress() expects an ObjectRef or a list of ObjectRefs")
    out = file or sys.stderr
    draw = force or (hasattr(out, "isatty") and out.isatty())
    start = time.monotonic()
    deadline = None if timeout is None else start + timeout
    pending = list(dict.fromkeys(items))  # wait() refuses duplicates; values are fetched for all below
    total = len(pending)
    last_draw = 0.0
    while pending:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if left == 0.0:
            if draw:
                out.write("\n")
            raise GetTimeoutError(f"{len(pending)} of {total} result(s) not ready within {timeout} s")
        step = min(REDRAW_EVERY_S * 5, left) if left is not None else REDRAW_EVERY_S * 5
        _ready, pending = api.wait(pending, num_returns=len(pending), timeout=step)
        now = time.monotonic()
        if draw and (now - last_draw >= REDRAW_EVERY_S or not pending):
            last_draw = now
            out.write("\r" + render(total - len(pending), total, now - start, desc))
            out.flush()
    if draw:
        out.write("\n")
        out.flush()
    values = api.get(items, timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
    return values[0] if single else values
