"""The driver loop that runs an experiment for `Tuner.fit()`.

Theory of operation. The driver owns three pure decision objects (a source of configs wrapping the search
algorithm, the trial scheduler, the stop conditions) and carries out their answers with trial actors
(`runner.TrialRunner`). Its loop:

1. While fewer than `max_concurrent_trials` trials run, take a trial to (re)start — a retry or a restored
   trial first, else a new config from the source — and start it on an idle actor with the same resource
   request, or on a new actor (placed by the cluster).
2. Wait (`p2pcompute.wait`) for any running trial's long poll to answer; each answer is a batch of reports.
3. For each report: write a checkpoint if it carries one, append it to the trial's files, tell the searcher,
   and ask the stop conditions and the scheduler: continue, stop (the trial's next `report` raises and its
   actor goes back to the idle pool), or exploit (restart it from another trial's checkpoint, new config).
   Reports after a stop or exploit decision are dropped: the trial's record ends at the decision.
4. A trial whose code raised or whose actor died is restarted from its latest checkpoint while
   `FailureConfig.max_failures` allows, else marked ERROR.

State that must outlive the driver is on disk (`storage.py`): checkpoints are written as they arrive and the
experiment state is saved atomically at most a second after any change (at once after a failure), so
`Tuner.restore(path, trainable)` after a crash keeps finished trials and restarts the others from their
latest checkpoints, with the searcher and scheduler as they were at the last save.
"""

from __future__ import annotations

import collections
import os
import time
import uuid
from typing import Any

import p2pcompute as p2p
from p2pcompute import errors

from ..common import Checkpoint, CheckpointConfig, FailureConfig, RunConfig
from .progress import ProgressReporter
from .runner import TrialRunner
from .schedulers.base import CONTINUE, STOP, Exploit
from .storage import ERROR, PENDING, RUNNING, TERMINATED, Trial
from .trainable import trial_options

__all__ = ["Driver"]

# A poll answers as soon as a trial has something; this only bounds how long an idle call is held.
POLL_TIMEOUT_S = 2.0
# The experiment state is saved at most this often, and at once after a failure.
STATE_SAVE_INTERVAL_S = 1.0


class Driver:
    """One run of the loop in the module docstring."""

    def __init__(self, tuner):
        self.t = tuner
        self.rc: RunConfig = tuner.run_config
        self.failure: FailureConfig = self.rc.failure_config
        self.ckpt_config: CheckpointConfig = self.rc.checkpoint_config
        self.storage = tuner.storage
        self.scheduler = tuner.scheduler
        self.source = tuner.source
        self.trials = tuner.trials
        self.by_id = {t.trial_id: t for t in self.trials}
        self.options = trial_options(tuner.trainable)
        self.options_key = tuple(sorted((k, repr(v)) for k, v in self.options.items()))
        self.max_concurrent = tuner.tune_config.max_concurrent_trials or self._default_concurrency()
        self.reporter = ProgressReporter(tuner.metric, tuner.mode, self.rc.verbose)
        self.restart_queue: collections.deque[Trial] = collections.deque(
            t for t in self.trials if t.status == PENDING)
        self.actors: dict[str, Any] = {}         # trial id -> actor running it
        self.polls: dict[Any, str] = {}          # poll ref -> trial id
        self.idle: list[Any] = []                # actors free for the next trial
        self.releasing: dict[Any, Any] = {}      # stop ref -> actor being freed
        self._dirty = False
        self._last_save = 0.0
        self._exp_prefix = uuid.uuid4().hex[:5]

    def _default_concurrency(self) -> int:
        cpus = p2p.cluster_resources().get("CPU", 1)
        per = self.options.get("num_cpus", 1)
        return max(1, int(cpus // per) if per else 64)

    # ------------------------------------------------------------------ main loop
    def run(self) -> None:
        self.trainable_ref = p2p.put(self.t.trainable)
        deadline = None if self.t.tune_config.time_budget_s is None else \
            time.monotonic() + self.t.tune_config.time_budget_s
        self.save(force=True)
        try:
            while True:
                if deadline is not None and time.monotonic() > deadline:
                    self.reporter.on_event("time budget reached: stopping running trials")
                    for trial in [x for x in self.trials if x.status == RUNNING]:
                        self.finish(trial, stopped=True)
                    break
                self.launch()
                if not self.polls:
                    if self.releasing:
                        p2p.wait(list(self.releasing), num_returns=1, timeout=1.0)
                        self.collect_released()
                        continue
                    if self.restart_queue:
                        continue
                    if not self.source.finished:
                        # The searcher has nothing now and nothing runs that could change that.
                        self.reporter.on_event("the searcher suggested nothing while no trial runs: ending")
                    break
                waiting = list(self.polls) + list(self.releasing)
                ready, _ = p2p.wait(waiting, num_returns=len(waiting), timeout=0.0)
                if not ready:
                    ready, _ = p2p.wait(waiting, num_returns=1, timeout=1.0)
                for ref in ready:
                    if ref in self.polls:
                        self.on_poll(self.polls.pop(ref), ref)
                self.collect_released()
                self.reporter.update(self.trials)
                self.save()
        finally:
            self.save(force=True)
            self.reporter.summary(self.trials)
            for actor in list(self.actors.values()) + self.idle + list(self.releasing.values()):
                try:
                    p2p.kill(actor)
                except Exception:  # already gone
                    pass

    def launch(self) -> None:
        # A new actor only while the actors alive fit the concurrency: an actor still being released holds
        # its resources, and a new one queued behind it could wait for them forever.
        while sum(t.status == RUNNING for t in self.trials) < self.max_concurrent and \
                (self.idle or len(self.actors) + len(self.releasing) < self.max_concurrent):
            if self.restart_queue:
                trial = self.restart_queue.popleft()
            else:
                trial_id = f"{self._exp_prefix}_{len(self.trials):05d}"
                config = self.source.next(trial_id)
                if config is None:
                    self.drop_idle()
                    return
                trial = Trial(trial_id, config)
                self.trials.append(trial)
                self.by_id[trial_id] = trial
                self.storage.write_params(trial)
            self.start(trial)

    def start(self, trial: Trial, checkpoint_path: str | None = None) -> None:
        """(Re)start `trial` from `checkpoint_path` (default: its own latest checkpoint)."""
        path = checkpoint_path or trial.checkpoint_path
        checkpoint = Checkpoint.from_directory(path) if path and os.path.isdir(path) else None
        trial.iteration = trial.checkpoint_iteration if checkpoint is not None else 0
        trial.generation += 1
        trial.status = RUNNING
        trial.started_at = time.time()
        self.scheduler.on_trial_add(trial.trial_id, trial.config)
        actor = self.actors.get(trial.trial_id)
        if actor is None:
            actor = self.idle.pop() if self.idle else TrialRunner.options(**self.options).remote()
            self.actors[trial.trial_id] = actor
        actor.start.remote(self.trainable_ref, trial.trial_id, trial.config, checkpoint, trial.iteration,
                           trial.generation, self.scheduler.decision_points(trial.trial_id))
        self.poll(trial)
        self._dirty = True

    def poll(self, trial: Trial) -> None:
        ref = self.actors[trial.trial_id].poll.remote(trial.generation, POLL_TIMEOUT_S, trial.iteration)
        self.polls[ref] = trial.trial_id

    # ------------------------------------------------------------------ answers
    def on_poll(self, trial_id: str, ref) -> None:
        trial = self.by_id[trial_id]
        if trial.status != RUNNING:
            return
        try:
            reports, done, error = p2p.get(ref)
        except (errors.ActorDiedError, errors.ActorUnavailableError, errors.WorkerCrashedError,
                errors.OwnerDiedError, errors.ObjectLostError) as exc:
            self.actors.pop(trial_id, None)
            self.on_failure(trial, f"the trial's actor died: {type(exc).__name__}: {exc}", actor_dead=True)
            return
        written = []
        decision = CONTINUE
        for metrics, checkpoint in reports:
            trial.iteration = int(metrics.get("training_iteration", trial.iteration + 1))
            if checkpoint is not None:
                trial.checkpoint_path = self.storage.write_checkpoint(trial_id, checkpoint, trial.iteration)
                trial.checkpoint_iteration = trial.iteration
                if self.ckpt_config.num_to_keep:
                    self.storage.prune_checkpoints(trial_id, self.ckpt_config.num_to_keep, trial.checkpoint_path)
                self._dirty = True
            written.append(metrics)
            trial.last_result = metrics
            self._dirty = True
            score = self.scheduler.score(metrics) if self.scheduler.metric else None
            if score is not None and (trial.best_score is None or score > trial.best_score):
                trial.best_score = score
            self.source.searcher.on_trial_result(trial_id, metrics)
            fed = dict(metrics, has_checkpoint=trial.checkpoint_path is not None)
            decision = self.scheduler.on_trial_result(trial_id, fed)
            if decision == CONTINUE and self.rc.should_stop(trial_id, metrics):
                decision = STOP
            if decision != CONTINUE:
                break
        self.storage.append_results(trial_id, written)
        if self.rc.verbose >= 2:
            for metrics in written:
                self.reporter.on_result(trial_id, metrics)
        if decision == STOP:
            self.finish(trial, stopped=not done)
        elif isinstance(decision, Exploit):
            self.exploit(trial, decision)
        elif done and error:
            self.on_failure(trial, error, actor_dead=False)
        elif done:
            self.finish(trial, stopped=False)
        else:
            self.poll(trial)

    def finish(self, trial: Trial, stopped: bool) -> None:
        trial.status = TERMINATED
        self._settle_runtime(trial)
        self.scheduler.on_trial_complete(trial.trial_id, trial.last_result)
        self.source.searcher.on_trial_complete(trial.trial_id, trial.last_result, False)
        self.release(trial, stopped)
        # Saved with the next throttled save: a driver dying before it only reruns this trial's tail from
        # its latest checkpoint on restore.
        self._dirty = True

    def exploit(self, trial: Trial, decision: Exploit) -> None:
        donor = self.by_id.get(decision.donor)
        if donor is None or not donor.checkpoint_path or not os.path.isdir(donor.checkpoint_path):
            self.poll(trial)
            return
        # The trial now owns a copy of the donor's checkpoint: its own restarts resume from it, and pruning
        # the donor's checkpoints cannot pull it away.
        path = self.storage.copy_checkpoint(donor.checkpoint_path, trial.trial_id, donor.checkpoint_iteration)
        self.storage.append_line(trial.trial_id, "pbt_policy.jsonl", {
            "iteration": trial.iteration, "donor": donor.trial_id, "donor_iteration": donor.checkpoint_iteration,
            "old_config": trial.config, "new_config": decision.config})
        trial.config = decision.config
        trial.checkpoint_path = path
        trial.checkpoint_iteration = donor.checkpoint_iteration
        self.storage.write_params(trial)
        self._settle_runtime(trial)
        self.start(trial)
        self.save(force=True)

    def on_failure(self, trial: Trial, error: str, actor_dead: bool) -> None:
        trial.num_failures += 1
        trial.error = error
        self._settle_runtime(trial)
        self.storage.write_error(trial.trial_id, f"failure {trial.num_failures} at iteration {trial.iteration}:\n"
                                 + error)
        if actor_dead:
            self.actors.pop(trial.trial_id, None)
        if self.failure.allows(trial.num_failures):
            self.reporter.on_event(f"{trial.trial_id} failed ({trial.num_failures}); restarting from "
                                   f"{'iteration ' + str(trial.checkpoint_iteration) if trial.checkpoint_path else 'scratch'}")
            self.start(trial)
        else:
            trial.status = ERROR
            self.scheduler.on_trial_remove(trial.trial_id)
            self.source.searcher.on_trial_complete(trial.trial_id, trial.last_result, True)
            self.release(trial, stopped=False)
        self.save(force=True)

    def _settle_runtime(self, trial: Trial) -> None:
        if trial.started_at is not None:
            trial.runtime_s += time.time() - trial.started_at
            trial.started_at = None

    # ------------------------------------------------------------------ actors
    def release(self, trial: Trial, stopped: bool) -> None:
        """Free the trial's actor: back to the idle pool once its thread has ended, else killed."""
        actor = self.actors.pop(trial.trial_id, None)
        if actor is None:
            return
        if not self.t.tune_config.reuse_actors:
            p2p.kill(actor)
        elif stopped:
            self.releasing[actor.stop.remote()] = actor
        else:
            self.idle.append(actor)

    def drop_idle(self) -> None:
        """Kill idle actors when there is no trial for them: they hold resources that actors of trials
        already started may be waiting for."""
        while self.idle:
            try:
                p2p.kill(self.idle.pop())
            except Exception:  # already gone
                pass

    def collect_released(self) -> None:
        if not self.releasing:
            return
        ready, _ = p2p.wait(list(self.releasing), num_returns=len(self.releasing), timeout=0.0)
        for ref in ready:
            actor = self.releasing.pop(ref)
            try:
                ok = p2p.get(ref)
            except errors.P2PError:
                ok = False
            if ok:
                self.idle.append(actor)
            else:
                try:
                    p2p.kill(actor)
                except Exception:
                    pass

    # ------------------------------------------------------------------ state
    def save(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and (not self._dirty or now - self._last_save < STATE_SAVE_INTERVAL_S):
            return
        self._last_save = now
        self._dirty = False
        self.storage.save_state(self.trials, {"source": self.source, "scheduler": self.scheduler,
                                              "metric": self.t.metric, "mode": self.t.mode})
