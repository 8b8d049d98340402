"""The live progress table and the final summary.

On a terminal the table is redrawn in place (cursor moved up over the previous drawing) at most once per
`refresh_s`; otherwise (a log file, CI) a line is printed per change of a trial's status, so logs stay short.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from typing import TextIO

from .storage import ERROR, PENDING, RUNNING, TERMINATED, Trial, flatten

__all__ = ["ProgressReporter", "format_table", "plot_learning_curves"]

_MAX_ROWS = 20


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def format_table(trials: list[Trial], metric: str | None, mode: str | None, elapsed_s: float,
                 max_rows: int = _MAX_ROWS) -> str:
    counts = {s: sum(t.status == s for t in trials) for s in (PENDING, RUNNING, TERMINATED, ERROR)}
    head = (f"== tune: {len(trials)} trials ({', '.join(f'{n} {s}' for s, n in counts.items() if n)}) "
            f"| {elapsed_s:.1f} s ==")
    if not trials:
        return head
    keys = list(dict.fromkeys(k for t in trials for k in flatten(t.config)))[:5]
    columns = ["trial", "status"] + keys + ([metric, f"best {metric}"] if metric else []) + ["iter", "time_s"]
    order = {RUNNING: 0, PENDING: 1, ERROR: 2, TERMINATED: 3}
    shown = sorted(trials, key=lambda t: (order.get(t.status, 4), t.trial_id))[:max_rows]
    rows = []
    for t in shown:
        flat = flatten(t.config)
        row = [t.trial_id, t.status] + [_fmt(flat.get(k, "")) for k in keys]
        if metric:
            latest = (t.last_result or {}).get(metric, "")
            best = "" if t.best_score is None else (-t.best_score if mode == "min" else t.best_score)
            row += [_fmt(latest), _fmt(best)]
        runtime = t.runtime_s + (time.time() - t.started_at if t.started_at else 0.0)
        row += [str(t.iteration), f"{runtime:.1f}"]
        rows.append(row)
    widths = [max(len(str(c)), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    lines = [head, "  ".join(str(c).ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    if len(trials) > len(shown):
        lines.append(f"... {len(trials) - len(shown)} more")
    return "\n".join(lines)


class ProgressReporter:
    def __init__(self, metric: str | None, mode: str | None, verbose: int = 1, stream: TextIO | None = None,
                 refresh_s: float = 1.0):
        self.metric, self.mode, self.verbose = metric, mode, verbose
        self.stream = stream or sys.stdout
        self.refresh_s = refresh_s
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty() and os.environ.get("TERM") != "dumb"
        self.start = time.time()
        self._last_draw = 0.0
        self._drawn_lines = 0
        self._statuses: dict[str, str] = {}

    def update(self, trials: list[Trial], force: bool = False) -> None:
        if self.verbose < 1:
            return
        if self.tty:
            now = time.time()
            if force or now - self._last_draw >= self.refresh_s:
                self._last_draw = now
                width = shutil.get_terminal_size((120, 40)).columns
                text = format_table(trials, self.metric, self.mode, now - self.start)
                lines = [line[:width] for line in text.splitlines()]
                out = (f"\x1b[{self._drawn_lines}F" if self._drawn_lines else "") + \
                    "".join(f"\x1b[2K{line}\n" for line in lines) + "\x1b[J"
                self.stream.write(out)
                self.stream.flush()
                self._drawn_lines = len(lines)
            return
        for t in trials:
            if self._statuses.get(t.trial_id) != t.status:
                self._statuses[t.trial_id] = t.status
                extra = ""
                if t.status in (TERMINATED, ERROR) and self.metric and t.last_result:
                    extra = f" {self.metric}={_fmt(t.last_result.get(self.metric))} iter={t.iteration}"
                if t.status == ERROR:
                    extra += f" failures={t.num_failures}"
                print(f"[tune {time.time() - self.start:7.1f}s] {t.trial_id} {t.status}{extra}",
                      file=self.stream, flush=True)

    def on_event(self, text: str) -> None:
        if self.verbose >= 1 and not self.tty:
            print(f"[tune {time.time() - self.start:7.1f}s] {text}", file=self.stream, flush=True)

    def on_result(self, trial_id: str, result: dict) -> None:
        """verbose=2: one line per report (above the table on a terminal, which is redrawn after it)."""
        shown = {k: v for k, v in result.items() if k not in ("trial_id", "timestamp", "time_this_iter_s")}
        line = f"[tune {time.time() - self.start:7.1f}s] {trial_id} " + " ".join(
            f"{k}={_fmt(v)}" for k, v in shown.items())
        if self.tty and self._drawn_lines:
            self.stream.write(f"\x1b[{self._drawn_lines}F\x1b[J")
            self._drawn_lines = 0
            self._last_draw = 0.0
        print(line, file=self.stream, flush=True)

    def summary(self, trials: list[Trial]) -> None:
        if self.verbose < 1:
            return
        if self.tty:
            self.update(trials, force=True)
        else:
            print(format_table(trials, self.metric, self.mode, time.time() - self.start), file=self.stream,
                  flush=True)


def plot_learning_curves(result_grid, metric: str, path: str) -> str:
    """Every trial's `metric` against `training_iteration`, to a PNG (`pip install "p2pcompute[plot]"`)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError('plotting needs matplotlib: pip install "p2pcompute[plot]"') from None
    fig, ax = plt.subplots(figsize=(8, 5))
    for result in result_grid:
        rows = [r for r in result.metrics_history if metric in r]
        ax.plot([r.get("training_iteration", i + 1) for i, r in enumerate(rows)], [r[metric] for r in rows],
                linewidth=0.8, alpha=0.7)
    ax.set_xlabel("training_iteration")
    ax.set_ylabel(metric)
    ax.set_title(f"{len(result_grid)} trials")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
