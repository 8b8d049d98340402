"""`Tuner` and `TuneConfig`: the driver that runs an experiment.

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

State that must outlive the driver is on disk (`storage.py`): every change of a trial's status and every
checkpoint is followed by an atomic save of the experiment state (throttled for plain reports), so
`Tuner.restore(path, trainable)` after a crash keeps finished trials and restarts the others from their
latest checkpoints, with the searcher and scheduler as they were at the last save.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import os
import time
import traceback
import uuid
from typing import Any, Callable, Mapping

import numpy as np

import p2pcompute as p2p
from p2pcompute import errors

from ..common import CheckpointConfig, FailureConfig, RunConfig, resources_to_options
from .progress import ProgressReporter
from .result_grid import ResultGrid
from .runner import TrialRunner
from .schedulers.base import CONTINUE, STOP, Exploit, FIFOScheduler, TrialScheduler
from .search.searcher import BasicVariantGenerator, Searcher, check_mode, grid_leaves
from .spaces import flatten_space, resolve
from .storage import ERROR, PENDING, RUNNING, TERMINATED, ExperimentStorage, Trial
from .trainable import as_function, trial_options

__all__ = ["Tuner", "TuneConfig"]

# A poll answers as soon as a trial has something; this only bounds how long an idle call is held.
POLL_TIMEOUT_S = 2.0
# Plain reports save the experiment state at most this often; status changes and checkpoints save at once.
STATE_SAVE_INTERVAL_S = 1.0


@dataclasses.dataclass
class TuneConfig:
    """`metric`/`mode`: what to optimise ("min" or "max"). `num_samples`: configs drawn (each grid point is
    tried that many times). `max_concurrent_trials`: trials running at once (default: as many as the
    cluster's CPUs fit). `search_alg`: a `tune.search` searcher (random by default). `scheduler`: a
    `tune.schedulers` scheduler (FIFO by default). `time_budget_s`: stop the experiment after that long.
    `reuse_actors`: run successive trials on the same actor when their resource requests match.
    `seed`: seeds the default random search and the sampling of constants-free domains."""

    metric: str | None = None
    mode: str | None = None
    num_samples: int = 1
    max_concurrent_trials: int | None = None
    search_alg: Searcher | None = None
    scheduler: TrialScheduler | None = None
    time_budget_s: float | None = None
    reuse_actors: bool = True
    seed: int | None = None

    def __post_init__(self):
        check_mode(self.mode)
        if (self.metric is None) != (self.mode is None):
            raise ValueError("TuneConfig needs both metric and mode, or neither")
        if isinstance(self.num_samples, bool) or not isinstance(self.num_samples, int) or \
                (self.num_samples < 1 and self.num_samples != -1):
            raise ValueError(f"num_samples must be an int >= 1 (or -1: until the time budget ends), "
                             f"got {self.num_samples!r}")
        if self.num_samples == -1 and self.time_budget_s is None:
            raise ValueError("num_samples=-1 (sample forever) needs a time_budget_s")
        if self.max_concurrent_trials is not None and (not isinstance(self.max_concurrent_trials, int)
                                                       or self.max_concurrent_trials < 1):
            raise ValueError(f"max_concurrent_trials must be an int >= 1, got {self.max_concurrent_trials!r}")
        if self.search_alg is not None and not isinstance(self.search_alg, Searcher):
            raise TypeError(f"search_alg must be a tune.search searcher, got {type(self.search_alg).__name__}")
        if self.scheduler is not None and not isinstance(self.scheduler, TrialScheduler):
            raise TypeError(f"scheduler must be a tune.schedulers scheduler, got {type(self.scheduler).__name__}")


class _ConfigSource:
    """Configs for new trials: `num_samples` rounds over every grid point, the searcher picking the values
    of the other domains. Pure; pickled with the experiment state so a restore continues where it was."""

    def __init__(self, space: Mapping, searcher: Searcher, num_samples: int, seed: int | None):
        self.space = dict(space)
        self.searcher = searcher
        self.num_samples = num_samples
        grid = grid_leaves(space)
        self.grid_paths = [path for path, _ in grid]
        self.grid_points = list(itertools.product(*[leaf.values for _, leaf in grid])) or [()]
        self.index = 0
        self.finished = False
        self.rng = np.random.default_rng(seed)

    @property
    def total(self) -> int | None:
        return None if self.num_samples == -1 else self.num_samples * len(self.grid_points)

    def next(self, trial_id: str) -> dict | None:
        """A config, or None when nothing can be suggested now (`finished` tells whether ever again)."""
        if self.finished:
            return None
        if self.total is not None and self.index >= self.total:
            self.finished = True
            return None
        values = self.searcher.suggest(trial_id)
        if values == Searcher.FINISHED:
            self.finished = True
            return None
        if values is None:
            return None
        point = self.grid_points[self.index % len(self.grid_points)]
        self.index += 1
        picks = dict(values)
        picks.update(zip(self.grid_paths, point))
        return resolve(self.space, picks, self.rng)


class Tuner:
    """Runs `trainable` over `param_space`; see the module docstring and docs/mlkit/tune.md."""

    def __init__(self, trainable: Any, *, param_space: Mapping | None = None,
                 tune_config: TuneConfig | None = None, run_config: RunConfig | None = None,
                 _restored: dict | None = None):
        as_function(trainable)  # a clear TypeError now rather than in every trial
        self.trainable = trainable
        self.param_space = dict(param_space or {})
        flatten_space(self.param_space)
        self.tune_config = tune_config or TuneConfig()
        self.run_config = run_config or RunConfig()
        if not isinstance(self.tune_config, TuneConfig):
            raise TypeError("tune_config must be a tune.TuneConfig")
        if not isinstance(self.run_config, RunConfig):
            raise TypeError("run_config must be a tune.RunConfig")
        tc = self.tune_config
        self.scheduler = tc.scheduler or FIFOScheduler()
        self.scheduler.set_search_properties(tc.metric, tc.mode)
        if self.scheduler.needs_metric() and (self.scheduler.metric is None or self.scheduler.mode is None):
            raise ValueError(f"{type(self.scheduler).__name__} needs a metric and mode: set them in "
                             f"TuneConfig(metric=..., mode=...) or on the scheduler")
        searcher = tc.search_alg or BasicVariantGenerator(seed=tc.seed)
        searcher.set_search_properties(tc.metric, tc.mode, self.param_space)
        if not isinstance(searcher, BasicVariantGenerator) and (searcher.metric is None or searcher.mode is None) \
                and type(searcher).__name__ != "ConcurrencyLimiter":
            raise ValueError(f"{type(searcher).__name__} needs a metric and mode: set them in TuneConfig")
        self.metric = tc.metric or self.scheduler.metric or searcher.metric
        self.mode = tc.mode or self.scheduler.mode or searcher.mode
        self.source = _ConfigSource(self.param_space, searcher, tc.num_samples, tc.seed)
        name = self.run_config.name or time.strftime("tune_%Y-%m-%d_%H-%M-%S") + f"_{uuid.uuid4().hex[:4]}"
        self.storage = ExperimentStorage(os.path.join(os.path.expanduser(os.fspath(self.run_config.storage_path)),
                                                      name))
        self.trials: list[Trial] = []
        self._restored = _restored

    # ------------------------------------------------------------------ restore
    @classmethod
    def can_restore(cls, path: str) -> bool:
        return ExperimentStorage.exists(path)

    @classmethod
    def restore(cls, path: str, trainable: Any, *, resume_errored: bool = False,
                param_space: Mapping | None = None) -> "Tuner":
        """The experiment saved under `path`, ready to `fit()` again: finished trials are kept, unfinished
        ones restart from their latest checkpoints (errored ones too with `resume_errored`), and new
        trials come from the searcher as saved."""
        path = os.path.abspath(os.path.expanduser(path))
        if not cls.can_restore(path):
            raise ValueError(f"{path!r} holds no experiment to restore (no tuner.pkl / experiment_state.pkl)")
        storage = ExperimentStorage(path)
        saved, state = storage.load_tuner(), storage.load_state()
        run_config = dataclasses.replace(saved["run_config"], name=os.path.basename(path),
                                         storage_path=os.path.dirname(path))
        tuner = cls(trainable, param_space=param_space or saved["param_space"], tune_config=saved["tune_config"],
                    run_config=run_config, _restored=state)
        tuner.source = state["source"]
        tuner.scheduler = state["scheduler"]
        trials = [Trial.from_state(d) for d in state["trials"]]
        for t in trials:
            if t.status == RUNNING or (resume_errored and t.status == ERROR):
                t.status = PENDING
                t.error = None
        tuner.trials = trials
        return tuner

    # ------------------------------------------------------------------ fit
    def fit(self) -> ResultGrid:
        if not p2p.is_initialized():
            p2p.init()
        if self._restored is None:
            self.storage.save_tuner({"param_space": self.param_space, "tune_config": self.tune_config,
                                     "run_config": self.run_config})
        driver = _Driver(self)
        driver.run()
        return ResultGrid(self.storage.path, self.trials, self.metric, self.mode)


class _Driver:
    """One run of the loop in the module docstring."""

    def __init__(self, tuner: Tuner):
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
        from ..common import Checkpoint
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
