"""The run's controller actor: it receives reports, keeps checkpoints on disk, and remembers progress.

Theory of operation. A run lives in a directory, `<storage_path>/<name>/`:

    trainer.pkl            the trainer (loop function, configs), so `restore(path)` can rebuild it
    state.json             latest checkpoint, its training_iteration, failures so far, whether it finished
    progress.jsonl         one line of rank 0's metrics per report (readable without p2pcompute)
    checkpoint_000012/     a reported checkpoint, named by its training_iteration

The controller is an actor placed on the driver's peer (so the storage path means the driver's disk) that
outlives restarts of the worker group. A report that carries a checkpoint is written to disk and only then
acknowledged (see `session.report`), and `state.json` is replaced atomically after the checkpoint directory
is complete, so a crash at any moment leaves a state that points to a whole checkpoint. A new controller on
an existing directory picks the state up: that is how a run resumes after its driver died.

Iterations: each `report` call is one training_iteration. After a restart from the checkpoint taken at
iteration k, the next report is iteration k+1 again, so iteration numbers always match the checkpoint's.
"""

from __future__ import annotations

import json
import os
import shutil
import time

from p2pcompute.mlkit.common import Checkpoint, CheckpointConfig, _atomic_write

STATE_FILE = "state.json"
PROGRESS_FILE = "progress.jsonl"
TRAINER_FILE = "trainer.pkl"


def checkpoint_dirname(iteration: int) -> str:
    return f"checkpoint_{iteration:06d}"


def read_state(run_dir: str) -> dict | None:
    path = os.path.join(run_dir, STATE_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


class TrainController:
    """Reports and checkpoints of one run (an actor, one per `fit()`)."""

    def __init__(self, run_dir: str, resume: bool, checkpoint_config: CheckpointConfig | None = None) -> None:
        self.run_dir = run_dir
        self.checkpoint_config = checkpoint_config or CheckpointConfig()
        os.makedirs(run_dir, exist_ok=True)
        state = read_state(run_dir) if resume else None
        self.latest: str | None = None  # directory name of the latest checkpoint
        self.latest_iteration = 0
        self.failures = 0
        self.kept: list[tuple[str, float | None]] = []  # (directory, score) of checkpoints on disk
        if state:
            self.latest = state.get("latest_checkpoint")
            self.latest_iteration = state.get("latest_iteration", 0)
            self.failures = state.get("failures", 0)
            self.kept = [tuple(k) for k in state.get("kept", [])]
        elif not resume and os.path.exists(os.path.join(run_dir, PROGRESS_FILE)):
            os.remove(os.path.join(run_dir, PROGRESS_FILE))  # a fresh run under an old name starts a new log
        self.base_iteration = self.latest_iteration
        self.attempt = 0
        self.history: list[dict] = []
        self.finished = False
        self._write_state()

    # ---- called by the driver ------------------------------------------------------------------------------

    def begin_attempt(self, attempt: int, failures: int) -> Checkpoint | None:
        """Start attempt `attempt` of the group: iterations restart after the latest checkpoint's."""
        self.attempt = attempt
        self.failures = failures
        self.base_iteration = self.latest_iteration
        self._write_state()
        return self.latest_checkpoint()

    def failures_so_far(self) -> int:
        return self.failures

    def record_failures(self, failures: int) -> None:
        self.failures = failures
        self._write_state()

    def latest_checkpoint(self) -> Checkpoint | None:
        if self.latest is None:
            return None
        return Checkpoint.from_directory(os.path.join(self.run_dir, self.latest))

    def poll(self, since: int) -> list[dict]:
        return self.history[since:]

    def finish(self) -> dict:
        self.finished = True
        self._write_state()
        return {"history": self.history, "latest": self.latest, "latest_iteration": self.latest_iteration,
                "failures": self.failures}

    # ---- called by workers ----------------------------------------------------------------------------------

    def report(self, attempt: int, rank: int, count: int, metrics: dict, checkpoint: Checkpoint | None) -> None:
        if attempt != self.attempt or self.finished:
            # Sent by a group the driver has already given up on (killed after a failure or a stop): its
            # iterations would be misnumbered and its checkpoint could replace a newer one.
            return
        iteration = self.base_iteration + count
        if rank == 0:
            row = dict(metrics)
            row.update(training_iteration=iteration, attempt=self.attempt, timestamp=time.time())
            self.history.append(row)
            with open(os.path.join(self.run_dir, PROGRESS_FILE), "a") as f:
                f.write(json.dumps(row, default=_json_default) + "\n")
        if checkpoint is not None:
            name = checkpoint_dirname(iteration)
            final = os.path.join(self.run_dir, name)
            staging = final + ".tmp"
            shutil.rmtree(staging, ignore_errors=True)
            checkpoint.to_directory(staging)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(staging, final)
            score = None
            attr = self.checkpoint_config.checkpoint_score_attribute
            if attr is not None and isinstance(metrics.get(attr), (int, float)):
                score = float(metrics[attr])
            self.kept = [k for k in self.kept if k[0] != name] + [(name, score)]
            self.latest, self.latest_iteration = name, iteration
            self._prune()
            self._write_state()

    # ---- internals -----------------------------------------------------------------------------------------

    def _prune(self) -> None:
        keep = self.checkpoint_config.num_to_keep
        if keep is None or len(self.kept) <= keep:
            return
        others = [k for k in self.kept if k[0] != self.latest]
        attr = self.checkpoint_config.checkpoint_score_attribute
        if attr is None:
            ranked = others  # oldest first: drop from the front
        else:
            sign = 1 if self.checkpoint_config.checkpoint_score_order == "max" else -1
            ranked = sorted(others, key=lambda k: -float("inf") if k[1] is None else sign * k[1])
        doomed = {k[0] for k in ranked[:len(self.kept) - keep]}
        for name in doomed:
            shutil.rmtree(os.path.join(self.run_dir, name), ignore_errors=True)
        self.kept = [k for k in self.kept if k[0] not in doomed]

    def _write_state(self) -> None:
        state = {"latest_checkpoint": self.latest, "latest_iteration": self.latest_iteration,
                 "failures": self.failures, "finished": self.finished, "kept": self.kept}
        _atomic_write(os.path.join(self.run_dir, STATE_FILE), json.dumps(state).encode())


def _json_default(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return repr(value)
