"""DataParallelTrainer: the loop's context, shards, reports and checkpoints on disk; restarts after a failure
(a loop that raises, a worker process killed with SIGKILL) from the latest checkpoint; resuming a run whose
driver was killed; stop conditions; bad arguments."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from itest_util import wait_until

from p2pcompute.mlkit import train

pytestmark = [pytest.mark.mlkit, pytest.mark.integration]

ZERO_CPU = {"CPU": 0}  # four workers fit on the 2-CPU test peer


def _run_config(tmp_path, name="run", **kw):
    return train.RunConfig(storage_path=str(tmp_path), name=name, verbose=0, **kw)


def _context_loop(config):
    ctx = train.get_context()
    X, y = train.get_dataset_shard("train")
    rows = int(train.allreduce(np.array([len(X)]), op="sum")[0])
    first = int(train.allgather_object(int(X[0, 0]) if len(X) else -1)[ctx.get_world_rank()])
    assert train.get_checkpoint() is None
    for step in range(1, config["steps"] + 1):
        ckpt = train.Checkpoint.from_dict({"step": step}) if ctx.get_world_rank() == 0 else None
        train.report({"step": step, "rank": ctx.get_world_rank(), "size": ctx.get_world_size(),
                      "local_rank": ctx.get_local_rank(), "node_rank": ctx.get_node_rank(), "rows": rows,
                      "first_row": first, "shard_rows": len(y)}, checkpoint=ckpt)


def test_loop_sees_its_context_shard_and_reports_land_on_disk(ml_cluster, tmp_path):
    X = np.arange(20 * 2).reshape(20, 2)
    y = np.arange(20)
    result = train.DataParallelTrainer(
        _context_loop, train_loop_config={"steps": 3},
        scaling_config=train.ScalingConfig(num_workers=3, resources_per_worker=ZERO_CPU),
        run_config=_run_config(tmp_path), datasets={"train": (X, y)}).fit()
    m = result.metrics
    assert (m["step"], m["training_iteration"], m["rank"], m["size"]) == (3, 3, 0, 3)
    assert m["rows"] == 20 and m["first_row"] == 0 and m["shard_rows"] == 7  # 7 + 7 + 6 rows, rank 0 first
    assert (m["local_rank"], m["node_rank"]) == (0, 0)
    assert result.num_failures == 0
    assert [h["step"] for h in result.metrics_history] == [1, 2, 3]
    assert result.checkpoint.to_dict() == {"step": 3}
    run_dir = tmp_path / "run"
    lines = [json.loads(line) for line in (run_dir / "progress.jsonl").read_text().splitlines()]
    assert [line["training_iteration"] for line in lines] == [1, 2, 3]
    assert sorted(p.name for p in run_dir.glob("checkpoint_*")) == [f"checkpoint_00000{i}" for i in (1, 2, 3)]
    assert train.DataParallelTrainer.can_restore(str(run_dir))


def _counting_loop(config):
    for step in range(1, 1000):
        train.report({"step": step}, checkpoint=train.Checkpoint.from_dict({"step": step}))


def test_stop_condition_ends_the_run_and_keeps_only_the_newest_checkpoints(ml_cluster, tmp_path):
    result = train.DataParallelTrainer(
        _counting_loop, scaling_config=train.ScalingConfig(num_workers=1, resources_per_worker=ZERO_CPU),
        run_config=_run_config(tmp_path, stop={"step": 4},
                               checkpoint_config=train.CheckpointConfig(num_to_keep=2))).fit()
    assert result.metrics["step"] >= 4  # the group is stopped at the first report the driver sees past 4
    kept = sorted(p.name for p in (tmp_path / "run").glob("checkpoint_*"))
    assert len(kept) == 2 and result.checkpoint.path.endswith(kept[-1])


def _failing_loop(config):
    with open(os.path.join(config["dir"], f"attempt{train.get_context().attempt}"), "w"):
        pass
    raise ValueError("boom in the loop")


def test_a_loop_that_keeps_raising_fails_after_max_failures_restarts(ml_cluster, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    trainer = train.DataParallelTrainer(
        _failing_loop, train_loop_config={"dir": str(marks)},
        scaling_config=train.ScalingConfig(num_workers=2, resources_per_worker=ZERO_CPU),
        run_config=_run_config(tmp_path, failure_config=train.FailureConfig(max_failures=1)))
    with pytest.raises(train.TrainingFailedError, match="boom in the loop") as info:
        trainer.fit()
    assert isinstance(info.value.cause, ValueError)
    assert sorted(p.name for p in marks.iterdir()) == ["attempt0", "attempt1"]  # one retry, then give up
    assert json.loads((tmp_path / "run" / "state.json").read_text())["failures"] == 2


def _killable_loop(config):
    """Six steps with a checked allreduce each; rank 1 of the first attempt waits to be killed after step 3."""
    ctx = train.get_context()
    rank, n = ctx.get_world_rank(), ctx.get_world_size()
    ckpt = train.get_checkpoint()
    start = ckpt.to_dict()["step"] if ckpt else 0
    rng = np.random.default_rng(rank)
    for step in range(start + 1, config["steps"] + 1):
        mine = rng.integers(-1000, 1000, size=70_000).astype(np.float64)  # 560 kB: the ring path
        total = train.allreduce(mine * 0 + rank + step, op="sum")
        assert np.array_equal(total, np.full(mine.shape, n * step + n * (n - 1) / 2)), "allreduce not exact"
        train.report({"step": step, "start": start},
                     checkpoint=train.Checkpoint.from_dict({"step": step}) if rank == 0 else None)
        if step == 3 and ctx.attempt == 0:
            train.barrier()  # rank 0's checkpoint of step 3 is stored before anyone dies
            if rank == 1:
                with open(config["pidfile"] + ".tmp", "w") as f:
                    f.write(str(os.getpid()))
                os.replace(config["pidfile"] + ".tmp", config["pidfile"])
                threading.Event().wait(120)
                raise RuntimeError("rank 1 was not killed")


@pytest.mark.timeout(120)
def test_sigkilled_worker_restarts_the_group_from_its_checkpoint(ml_cluster, tmp_path):
    pidfile = str(tmp_path / "victim.pid")
    trainer = train.DataParallelTrainer(
        _killable_loop, train_loop_config={"steps": 6, "pidfile": pidfile},
        scaling_config=train.ScalingConfig(num_workers=3, resources_per_worker=ZERO_CPU),
        run_config=_run_config(tmp_path, failure_config=train.FailureConfig(max_failures=1)))
    outcome: dict = {}
    runner = threading.Thread(target=lambda: outcome.update(result=trainer.fit()), daemon=True)
    runner.start()
    wait_until(lambda: os.path.exists(pidfile), 60, what="rank 1 to reach step 3")
    victim = int(open(pidfile).read())
    os.kill(victim, signal.SIGKILL)
    runner.join(90)
    assert not runner.is_alive(), "fit() did not finish after the restart"
    result = outcome["result"]
    assert result.num_failures == 1
    assert result.metrics["step"] == 6 and result.metrics["training_iteration"] == 6
    assert result.checkpoint.to_dict() == {"step": 6}
    after = [h for h in result.metrics_history if h["attempt"] == 1]
    assert [(h["step"], h["start"], h["training_iteration"]) for h in after] == [(4, 3, 4), (5, 3, 5), (6, 3, 6)]


DRIVER = """
import json, os, sys, threading
import numpy as np
import p2pcompute as p2p
from p2pcompute.mlkit import train

def loop(config):
    ckpt = train.get_checkpoint()
    start = ckpt.to_dict()["step"] if ckpt else 0
    rank = train.get_context().get_world_rank()
    for step in range(start + 1, config["steps"] + 1):
        assert train.allreduce(np.array([1.0]))[0] == 2.0
        train.report({"step": step, "start": start},
                     checkpoint=train.Checkpoint.from_dict({"step": step}) if rank == 0 else None)
        if step == 3 and config["hang"]:
            train.barrier()
            if rank == 0:
                open(config["marker"], "w").close()
            threading.Event().wait(120)

p2p.init(num_cpus=2)
storage, marker, mode = sys.argv[1], sys.argv[2], sys.argv[3]
if mode == "first":
    train.DataParallelTrainer(
        loop, train_loop_config={"steps": 6, "hang": True, "marker": marker},
        scaling_config=train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0}),
        run_config=train.RunConfig(storage_path=storage, name="resumable", verbose=0)).fit()
else:
    path = os.path.join(storage, "resumable")
    trainer = train.DataParallelTrainer.restore(path, train_loop_config={"steps": 6, "hang": False, "marker": ""})
    result = trainer.fit()
    print("RESULT " + json.dumps({"metrics": result.metrics, "history": result.metrics_history,
                                  "checkpoint": result.checkpoint.to_dict()}))
"""


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_a_run_whose_driver_was_killed_resumes_from_its_storage_path(tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(DRIVER))
    storage, marker = str(tmp_path / "runs"), str(tmp_path / "at_step_3")
    env = {k: v for k, v in os.environ.items() if k not in ("P2P_ADDRESS", "P2P_TOKEN")}
    first = subprocess.Popen([sys.executable, str(script), storage, marker, "first"], cwd=str(tmp_path), env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: os.path.exists(marker) or first.poll() is not None, 90, what="the first driver at step 3")
        assert first.poll() is None, first.communicate()[0]
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
    second = subprocess.run([sys.executable, str(script), storage, marker, "second"], cwd=str(tmp_path), env=env,
                            capture_output=True, text=True, timeout=90)
    assert second.returncode == 0, second.stdout + second.stderr
    line = next(x for x in second.stdout.splitlines() if x.startswith("RESULT "))
    out = json.loads(line[len("RESULT "):])
    assert out["checkpoint"] == {"step": 6}
    assert [(h["step"], h["start"]) for h in out["history"]] == [(4, 3), (5, 3), (6, 3)]
    progress = (tmp_path / "runs" / "resumable" / "progress.jsonl").read_text().splitlines()
    assert [json.loads(x)["training_iteration"] for x in progress] == [1, 2, 3, 4, 5, 6]


def test_resume_from_checkpoint_is_what_a_fresh_run_starts_from(ml_cluster, tmp_path):
    def loop():
        train.report({"resumed": train.get_checkpoint().to_dict()["step"]})

    result = train.DataParallelTrainer(
        loop, scaling_config=train.ScalingConfig(num_workers=1, resources_per_worker=ZERO_CPU),
        run_config=_run_config(tmp_path), resume_from_checkpoint=train.Checkpoint.from_dict({"step": 41})).fit()
    assert result.metrics["resumed"] == 41


def _mlkit_data_loop():
    shard = train.get_dataset_shard("train")
    total = sum(int(batch["id"].sum()) for batch in shard.iter_batches(batch_size=16))
    train.report({"sum": int(train.allreduce(np.array([total]))[0]), "rows": shard.count()})


def test_an_mlkit_data_dataset_is_split_across_the_workers(ml_cluster, tmp_path):
    data = pytest.importorskip("p2pcompute.mlkit.data")
    result = train.DataParallelTrainer(
        _mlkit_data_loop, scaling_config=train.ScalingConfig(num_workers=2, resources_per_worker=ZERO_CPU),
        run_config=_run_config(tmp_path), datasets={"train": data.range(100)}).fit()
    assert result.metrics["sum"] == sum(range(100)) and result.metrics["rows"] == 50


def test_bad_arguments_fail_at_once_with_a_message(tmp_path):
    with pytest.raises(TypeError, match="train_loop_per_worker"):
        train.DataParallelTrainer(42)
    with pytest.raises(TypeError, match="scaling_config"):
        train.DataParallelTrainer(lambda: None, scaling_config={"num_workers": 2})
    with pytest.raises(TypeError, match="datasets"):
        train.DataParallelTrainer(lambda: None, datasets=[1, 2])
    with pytest.raises(ValueError, match="num_workers"):
        train.ScalingConfig(num_workers=0)
    with pytest.raises(ValueError, match="no trainer run"):
        train.DataParallelTrainer.restore(str(tmp_path))
    with pytest.raises(RuntimeError, match="inside train_loop_per_worker"):
        train.report({"x": 1})
