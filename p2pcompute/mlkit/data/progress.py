"""Progress bars while a dataset executes (one line per stage, on a terminal only) and the stats summary.

The bars redraw at most 5 times a second in place (cursor up, rewrite) on stderr, and only when stderr is a
terminal; in logs, notebooks' captured output and CI nothing is printed. `format_stats` turns the stages'
`StageStats` into the text `Dataset.stats()` returns.
"""

from __future__ import annotations

import os
import sys
import time

_REDRAW_S = 0.2


def wanted() -> bool:
    if os.environ.get("P2P_DATA_PROGRESS") == "0":
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class ProgressBars:
    def __init__(self, stages: list, stream=None):
        self.stages = stages
        self.stream = stream or sys.stderr
        self._drawn = 0
        self._last = 0.0

    def update(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < _REDRAW_S:
            return
        self._last = now
        lines = [self._line(s) for s in self.stages]
        out = ("\x1b[F" * self._drawn) + "".join("\x1b[2K" + line + "\n" for line in lines)
        self.stream.write(out)
        self.stream.flush()
        self._drawn = len(lines)

    def close(self) -> None:
        self.update(force=True)

    @staticmethod
    def _line(stage) -> str:
        st = stage.stats
        total = st.total_hint
        width = 24
        if total:
            frac = min(1.0, st.tasks_done / total)
            bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
            count = f"{st.tasks_done}/{total}"
        else:
            bar = ("#" if stage.finished() else ">") * 1 + " " * (width - 1)
            count = f"{st.tasks_done}"
        running = st.tasks_launched - st.tasks_done
        return f"{stage.name[:40]:40s} [{bar}] {count} blocks, {st.rows_out:,} rows, {running} running"


def format_stats(stage_stats: list, wall_s: float) -> str:
    if not stage_stats:
        return "Dataset has not been executed yet: consume it (take, iter_batches, materialize, ...) first."
    lines = []
    for i, st in enumerate(stage_stats, 1):
        span = (st.finished_at - st.started_at) if st.started_at and st.finished_at else 0.0
        lines.append(f"Operator {i} {st.name}: {st.tasks_done} tasks, {st.blocks_out} blocks, "
                     f"{st.rows_out:,} rows, {st.bytes_out / 2**20:.1f} MiB; {span:.2f} s wall")
        for name, t in st.op_time_s.items():
            rows = st.op_rows.get(name, 0)
            rate = f", {rows / t:,.0f} rows/s per task" if t > 0 else ""
            lines.append(f"  * {name}: {t:.3f} s in tasks (summed), {rows:,} rows out{rate}")
    lines.append(f"Dataset total: {wall_s:.2f} s wall from first task to last block consumed")
    return "\n".join(lines)
