"""`DataParallelTrainer`: N worker actors running one training loop, restarted together after a failure.

Theory of operation. `fit()` (the driver) writes the trainer to `<storage_path>/<name>/trainer.pkl`, puts
each dataset's shards into the object store once, and starts the run's controller (`controller.py`) on its
own peer. Then, per *attempt*: it creates the group's worker actors (resources and placement from the
`ScalingConfig`), tells each its rank and the handles of all the others (for the collectives), and calls
`run` on every worker with the latest checkpoint. It watches the `run` calls and the controller's reports:

- every `run` returned: the run is done;
- a report met `RunConfig.stop`: the group is stopped and the run is done;
- a `run` failed (its worker process or peer died, or the loop raised): the whole group is killed — the
  survivors may be blocked in a collective with the dead rank — and, if `FailureConfig.max_failures` allows,
  a new group starts from the latest checkpoint. Otherwise `fit()` raises `TrainingFailedError`.

`DataParallelTrainer.restore(path)` rebuilds a trainer from its directory, and its `fit()` resumes from the
latest checkpoint there, counting the failures already spent: a run whose driver died carries on.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Any, Callable

import cloudpickle

import p2pcompute as p2p
from p2pcompute.errors import P2PError
from p2pcompute.mlkit.common import Checkpoint, RunConfig, ScalingConfig
from p2pcompute.mlkit.train.controller import TRAINER_FILE, TrainController, read_state
from p2pcompute.mlkit.train.session import TrainContext
from p2pcompute.mlkit.train.worker import RemoteTrainWorker, split_dataset
from p2pcompute.util.scheduling_strategies import NodeAffinitySchedulingStrategy

POLL_INTERVAL_S = 0.2


class TrainingFailedError(P2PError, RuntimeError):
    """The run failed more often than `FailureConfig.max_failures` allows; `.cause` is the last failure."""

    def __init__(self, message: str, cause: BaseException | None = None):
        super().__init__(message)
        self.cause = cause


@dataclasses.dataclass
class Result:
    """What `fit()` returns: rank 0's last metrics, the latest checkpoint, and where the run lives."""

    metrics: dict
    checkpoint: Checkpoint | None
    path: str
    metrics_history: list[dict]
    num_failures: int
    error: BaseException | None = None

    @property
    def metrics_dataframe(self):
        try:
            import pandas as pd
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("Result.metrics_dataframe needs pandas: pip install 'p2pcompute[data]'") from exc
        return pd.DataFrame(self.metrics_history)


RemoteController = p2p.remote(TrainController)


class DataParallelTrainer:
    """Run `train_loop_per_worker` on `scaling_config.num_workers` workers with collectives between them."""

    def __init__(self, train_loop_per_worker: Callable, *, train_loop_config: dict | None = None,
                 scaling_config: ScalingConfig | None = None, run_config: RunConfig | None = None,
                 datasets: dict[str, Any] | None = None, resume_from_checkpoint: Checkpoint | None = None,
                 collective_timeout_s: float | None = 1800.0) -> None:
        if not callable(train_loop_per_worker):
            raise TypeError(f"train_loop_per_worker must be a function, got {type(train_loop_per_worker).__name__}")
        if train_loop_config is not None and not isinstance(train_loop_config, dict):
            raise TypeError(f"train_loop_config must be a dict, got {type(train_loop_config).__name__}")
        if scaling_config is not None and not isinstance(scaling_config, ScalingConfig):
            raise TypeError("scaling_config must be a train.ScalingConfig")
        if run_config is not None and not isinstance(run_config, RunConfig):
            raise TypeError("run_config must be a train.RunConfig")
        if datasets is not None and not isinstance(datasets, dict):
            raise TypeError("datasets must be a dict of name -> dataset, e.g. {'train': (X, y)}")
        if resume_from_checkpoint is not None and not isinstance(resume_from_checkpoint, Checkpoint):
            raise TypeError("resume_from_checkpoint must be a train.Checkpoint")
        self.train_loop_per_worker = train_loop_per_worker
        self.train_loop_config = train_loop_config
        self.scaling_config = scaling_config or ScalingConfig()
        self.run_config = run_config or RunConfig()
        self.datasets = datasets or {}
        self.resume_from_checkpoint = resume_from_checkpoint
        self.collective_timeout_s = collective_timeout_s
        if self.run_config.name is None:
            self.run_config = dataclasses.replace(
                self.run_config, name=f"{type(self).__name__}_{time.strftime('%Y-%m-%d_%H-%M-%S')}")
        self._resume = False

    # ---- resuming -----------------------------------------------------------------------------------------

    @property
    def path(self) -> str:
        return os.path.join(os.path.expanduser(os.fspath(self.run_config.storage_path)), self.run_config.name)

    @classmethod
    def can_restore(cls, path: str) -> bool:
        """Whether `path` holds a run that `restore` can pick up."""
        return os.path.isfile(os.path.join(path, TRAINER_FILE)) and read_state(path) is not None

    @classmethod
    def restore(cls, path: str, *, datasets: dict[str, Any] | None = None,
                train_loop_per_worker: Callable | None = None, train_loop_config: dict | None = None,
                scaling_config: ScalingConfig | None = None) -> "DataParallelTrainer":
        """The trainer saved under `path`; its `fit()` continues from the latest checkpoint there.

        Datasets are not saved with the run (they may be large): pass them again. Any argument given here
        replaces the saved one.
        """
        path = os.path.abspath(os.path.expanduser(path))
        if not cls.can_restore(path):
            raise ValueError(f"{path!r} holds no trainer run to restore (no {TRAINER_FILE} and state.json)")
        with open(os.path.join(path, TRAINER_FILE), "rb") as f:
            saved = cloudpickle.load(f)
        missing = set(saved["dataset_names"]) - set(datasets or {})
        if missing:
            raise ValueError(f"restore({path!r}) needs the datasets the run was given: pass datasets= with "
                             f"{sorted(missing)}")
        run_config = dataclasses.replace(saved["run_config"], storage_path=os.path.dirname(path),
                                         name=os.path.basename(path))
        trainer = saved["cls"].__new__(saved["cls"])
        DataParallelTrainer.__init__(
            trainer, train_loop_per_worker or saved["train_loop_per_worker"],
            train_loop_config=train_loop_config if train_loop_config is not None else saved["train_loop_config"],
            scaling_config=scaling_config or saved["scaling_config"], run_config=run_config, datasets=datasets,
            resume_from_checkpoint=saved["resume_from_checkpoint"],
            collective_timeout_s=saved["collective_timeout_s"])
        trainer._resume = True
        return trainer

    def _save(self) -> None:
        os.makedirs(self.path, exist_ok=True)
        state = {"cls": type(self), "train_loop_per_worker": self.train_loop_per_worker,
                 "train_loop_config": self.train_loop_config, "scaling_config": self.scaling_config,
                 "run_config": self.run_config, "dataset_names": sorted(self.datasets),
                 "resume_from_checkpoint": self.resume_from_checkpoint,
                 "collective_timeout_s": self.collective_timeout_s}
        tmp = os.path.join(self.path, TRAINER_FILE + ".tmp")
        with open(tmp, "wb") as f:
            cloudpickle.dump(state, f)
        os.replace(tmp, os.path.join(self.path, TRAINER_FILE))

    # ---- running ------------------------------------------------------------------------------------------

    def fit(self) -> Result:
        """Train to the end (or to `RunConfig.stop`); restart the group after failures as allowed."""
        if not p2p.is_initialized():
            p2p.init()
        self._save()
        n = self.scaling_config.num_workers
        shards = {name: [p2p.put(s) for s in split_dataset(ds, n)] for name, ds in self.datasets.items()}
        here = p2p.get_runtime_context().get_node_id()
        controller = RemoteController.options(
            num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=True),
        ).remote(self.path, self._resume, self.run_config.checkpoint_config)
        failure_config = self.run_config.failure_config
        failures = p2p.get(controller.failures_so_far.remote())
        attempt, error, seen = 0, None, 0
        try:
            while True:
                checkpoint = p2p.get(controller.begin_attempt.remote(attempt, failures)) or self.resume_from_checkpoint
                outcome, error, seen = self._run_attempt(attempt, shards, checkpoint, controller, seen)
                if outcome == "done":
                    break
                failures += 1
                if not failure_config.allows(failures):
                    p2p.get(controller.record_failures.remote(failures))
                    raise TrainingFailedError(
                        f"training failed {failures} time(s), more than FailureConfig(max_failures="
                        f"{failure_config.max_failures}) allows; last error: {error!r}. The run's checkpoints are "
                        f"in {self.path}; DataParallelTrainer.restore({self.path!r}) resumes it", error)
                self._say(1, f"[train] attempt {attempt} failed ({type(error).__name__}: {error}); restarting the "
                             f"group from the latest checkpoint (failure {failures} of "
                             f"{'unlimited' if failure_config.max_failures == -1 else failure_config.max_failures})")
                attempt += 1
            summary = p2p.get(controller.finish.remote())
        finally:
            p2p.kill(controller)
        history = summary["history"]
        checkpoint = (Checkpoint.from_directory(os.path.join(self.path, summary["latest"]))
                      if summary["latest"] else None)
        metrics = dict(history[-1]) if history else {}
        self._say(1, f"[train] finished after {metrics.get('training_iteration', 0)} iterations, {failures} "
                     f"failure(s); results in {self.path}")
        return Result(metrics, checkpoint, self.path, history, failures)

    def _run_attempt(self, attempt: int, shards: dict, checkpoint, controller, seen: int):
        n = self.scaling_config.num_workers
        options = self.scaling_config.worker_options()
        if self.scaling_config.placement_strategy in ("SPREAD", "STRICT_SPREAD"):
            options["scheduling_strategy"] = "SPREAD"
        workers = [RemoteTrainWorker.options(**options).remote() for _ in range(n)]
        try:
            infos = p2p.get([w.info.remote() for w in workers])
            # Ranks on one peer are consecutive (as in Ray Train): the ring then crosses between machines
            # once per machine rather than at every step.
            first_seen = {}
            for info in infos:
                first_seen.setdefault(info["node_id"], len(first_seen))
            order = sorted(range(n), key=lambda i: (first_seen[infos[i]["node_id"]], i))
            workers, infos = [workers[i] for i in order], [infos[i] for i in order]
            contexts = self._contexts(infos, attempt)
            p2p.get([w.setup.remote(rank, workers, self.collective_timeout_s) for rank, w in enumerate(workers)])
            blas_threads = int(options.get("num_cpus", 1)) or 1
            runs = [w.run.remote(self.train_loop_per_worker, self.train_loop_config, contexts[rank],
                                 {name: refs[rank] for name, refs in shards.items()}, checkpoint, controller,
                                 blas_threads)
                    for rank, w in enumerate(workers)]
            pending = list(runs)
            while pending:
                ready, pending = p2p.wait(pending, num_returns=len(pending), timeout=POLL_INTERVAL_S)
                for ref in ready:
                    try:
                        p2p.get(ref)
                    except Exception as exc:  # the loop raised, or its worker or peer died
                        return "failed", exc, seen
                new = p2p.get(controller.poll.remote(seen))
                seen += len(new)
                for row in new:
                    self._say(2, f"[train] {row}")
                    if self.run_config.should_stop(self.run_config.name, row):
                        return "done", None, seen
            return "done", None, seen
        except Exception as exc:  # a worker died while the group was being set up
            return "failed", exc, seen
        finally:
            for w in workers:
                p2p.kill(w)

    def _contexts(self, infos: list[dict], attempt: int) -> list[TrainContext]:
        nodes: list[str] = []
        for info in infos:
            if info["node_id"] not in nodes:
                nodes.append(info["node_id"])
        per_node: dict[str, int] = {}
        contexts = []
        for rank, info in enumerate(infos):
            node = info["node_id"]
            local = per_node.get(node, 0)
            per_node[node] = local + 1
            contexts.append((rank, node, local))
        return [TrainContext(world_rank=rank, world_size=len(infos), local_rank=local,
                             local_world_size=per_node[node], node_rank=nodes.index(node),
                             experiment_name=self.run_config.name, storage_path=self.path, attempt=attempt)
                for rank, node, local in contexts]

    def _say(self, level: int, line: str) -> None:
        if self.run_config.verbose >= level:
            print(line, file=sys.stdout, flush=True)
