"""The run controller's bookkeeping, stepped directly (no cluster): iterations, files on disk, checkpoint
retention, and picking a run up again from its directory."""

from __future__ import annotations

import json

import pytest

from p2pcompute.mlkit.common import Checkpoint, CheckpointConfig
from p2pcompute.mlkit.train.controller import TrainController, read_state

pytestmark = [pytest.mark.mlkit]


def _ckpt(step):
    return Checkpoint.from_dict({"step": step})


def test_reports_number_iterations_and_land_on_disk(tmp_path):
    c = TrainController(str(tmp_path), resume=False)
    assert c.begin_attempt(0, 0) is None
    for count in (1, 2, 3):
        c.report(0, 0, count, {"loss": 1.0 / count}, _ckpt(count) if count != 2 else None)
        c.report(0, 1, count, {"ignored": True}, None)  # only rank 0's metrics are kept
    lines = [json.loads(x) for x in (tmp_path / "progress.jsonl").read_text().splitlines()]
    assert [x["training_iteration"] for x in lines] == [1, 2, 3] and "ignored" not in lines[0]
    assert sorted(p.name for p in tmp_path.glob("checkpoint_*")) == ["checkpoint_000001", "checkpoint_000003"]
    state = read_state(str(tmp_path))
    assert state["latest_checkpoint"] == "checkpoint_000003" and state["latest_iteration"] == 3
    assert c.latest_checkpoint().to_dict() == {"step": 3}


def test_a_restart_counts_on_from_the_latest_checkpoint(tmp_path):
    c = TrainController(str(tmp_path), resume=False)
    c.begin_attempt(0, 0)
    c.report(0, 0, 1, {}, _ckpt(1))
    c.report(0, 0, 2, {}, None)  # progress past the checkpoint is lost with the group
    assert c.begin_attempt(1, 1).to_dict() == {"step": 1}
    c.report(0, 0, 3, {}, _ckpt(3))  # late, from the killed group: ignored
    c.report(1, 0, 1, {}, None)
    assert [h["training_iteration"] for h in c.history] == [1, 2, 2]
    assert [h["attempt"] for h in c.history] == [0, 0, 1]
    assert c.latest_checkpoint().to_dict() == {"step": 1}
    c.finish()
    c.report(1, 0, 2, {}, _ckpt(9))  # after the run ended: ignored
    assert len(c.history) == 3 and c.latest_checkpoint().to_dict() == {"step": 1}


def test_a_new_controller_resumes_the_run_in_its_directory(tmp_path):
    first = TrainController(str(tmp_path), resume=False)
    first.begin_attempt(0, 0)
    first.report(0, 0, 1, {}, _ckpt(1))
    first.report(0, 0, 2, {}, _ckpt(2))
    first.begin_attempt(1, 1)  # one failure spent
    again = TrainController(str(tmp_path), resume=True)
    assert again.failures_so_far() == 1
    assert again.begin_attempt(0, again.failures_so_far()).to_dict() == {"step": 2}
    again.report(0, 0, 1, {}, None)
    assert again.history[-1]["training_iteration"] == 3
    fresh = TrainController(str(tmp_path), resume=False)  # same name, not resumed: a new run
    assert fresh.latest_checkpoint() is None and not (tmp_path / "progress.jsonl").exists()


@pytest.mark.parametrize("order,kept_scores", [("max", {0.9, 0.1}), ("min", {0.2, 0.1})])
def test_retention_keeps_the_best_and_always_the_latest(tmp_path, order, kept_scores):
    config = CheckpointConfig(num_to_keep=2, checkpoint_score_attribute="acc", checkpoint_score_order=order)
    c = TrainController(str(tmp_path), resume=False, checkpoint_config=config)
    c.begin_attempt(0, 0)
    for count, acc in enumerate([0.5, 0.9, 0.2, 0.1], start=1):
        c.report(0, 0, count, {"acc": acc}, _ckpt(count))
    scores = {s for _, s in c.kept}
    assert scores == kept_scores
    assert c.latest == "checkpoint_000004"  # the newest (acc 0.1) stays: restarts resume from it
    assert len(list(tmp_path.glob("checkpoint_*"))) == 2
