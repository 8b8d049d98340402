"""The trial actor: runs a trainable in a thread and buffers its reports for the driver.

Theory of operation: the actor is created with two call threads (`max_concurrency=2`) so a long `poll` and
a `start`/`stop` can be served at once. `start` launches the trainable in a fresh thread under a `Session`
tagged with a *generation* number chosen by the driver; `poll(generation, timeout_s)` blocks until that
generation has buffered reports or has ended (or the timeout passes) and hands back everything buffered in
one reply. Generations keep a restarted trial's reports apart from those of the run it replaced, since
calls on separate threads may be served in any order. One actor runs many trials in turn (the driver reuses
idle actors with the same resource request), which saves a process start per trial.
"""

from __future__ import annotations

import threading
import traceback

import p2pcompute as p2p

from . import session as session_mod
from .trainable import as_function

__all__ = ["TrialRunner"]

# How long `stop` waits for a trainable to reach its next report before giving up on the thread; the
# driver then kills the actor instead of reusing it.
STOP_WAIT_S = 10.0
BATCH_WINDOW_S = 0.003


@p2p.remote(max_concurrency=2)
class TrialRunner:
    def __init__(self):
        self.cond = threading.Condition()
        self.session: session_mod.Session | None = None
        self.thread: threading.Thread | None = None

    def start(self, trainable, trial_id: str, config: dict, checkpoint, start_iteration: int,
              generation: int, decision_points: dict | None = None) -> bool:
        if not self._stop_current(STOP_WAIT_S):
            return False
        with self.cond:
            s = session_mod.Session(trial_id, config, checkpoint, start_iteration, generation, self.cond,
                                    decision_points)
            self.session = s
            self.cond.notify_all()
        self.thread = threading.Thread(target=self._run, args=(trainable, s), daemon=True,
                                       name=f"trial-{trial_id}")
        self.thread.start()
        return True

    def _run(self, trainable, s: session_mod.Session) -> None:
        session_mod._local.session = s
        error = None
        try:
            as_function(trainable)(dict(s.config))
        except session_mod.StopTrial:
            pass
        except BaseException as exc:  # the trial's failure, reported to the driver (which may retry)
            error = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        finally:
            session_mod._local.session = None
            with self.cond:
                s.done = True
                s.error = error
                self.cond.notify_all()

    def poll(self, generation: int, timeout_s: float, acked: int = 0):
        """(reports, done, error) of `generation`: whatever is buffered once there is something or it ended.
        `acked`: the driver has decided on every report up to that iteration (a waiting trial may go on)."""
        with self.cond:
            s = self.session
            if s is not None and s.generation == generation:
                s.acknowledge(acked)
            def ready():
                s = self.session
                return s is not None and s.generation == generation and (s.buffer or s.done)
            self.cond.wait_for(ready, timeout=timeout_s)
            s = self.session
            if s is None or s.generation != generation:
                return [], False, None
            if not s.done and not s.waiting:
                # A short window so a trial's last report and its end (or a quick next report) share one
                # reply: it saves the driver a round trip per trial at no cost to a trial's progress.
                self.cond.wait_for(lambda: s.done or s.waiting or s.stop_requested, timeout=BATCH_WINDOW_S)
            reports, s.buffer = s.buffer, []
            return reports, s.done, s.error

    def stop(self) -> bool:
        """End the current run at its next report; True once its thread has exited (the actor is reusable)."""
        return self._stop_current(STOP_WAIT_S)

    def _stop_current(self, timeout_s: float) -> bool:
        with self.cond:
            if self.session is not None:
                self.session.stop_requested = True
                self.cond.notify_all()  # a trial waiting at a decision point wakes up to stop
        if self.thread is not None:
            self.thread.join(timeout_s)
            if self.thread.is_alive():
                return False
        return True

    def node_id(self) -> str:
        return p2p.get_runtime_context().node_id
