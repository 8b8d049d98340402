"""The in-trial session (buffered reports, waits at decision points, stop) and the shared Checkpoint record,
without a cluster."""

from __future__ import annotations

import os
import pickle
import threading

import numpy as np
import pytest

from p2pcompute.mlkit import tune
from p2pcompute.mlkit.common import Checkpoint, FailureConfig, RunConfig, ScalingConfig
from p2pcompute.mlkit.tune import session as session_mod

pytestmark = pytest.mark.mlkit


def run_in_session(fn, **kw):
    cond = threading.Condition()
    s = session_mod.Session("t1", {}, None, kw.pop("start", 0), 1, cond, kw.pop("points", None))
    outcome = {}

    def body():
        session_mod._local.session = s
        try:
            fn()
            outcome["done"] = True
        except session_mod.StopTrial:
            outcome["stopped"] = True

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return s, thread, outcome


def test_reports_are_buffered_with_iteration_and_times():
    def fn():
        for i in range(3):
            tune.report({"v": i})
    s, thread, outcome = run_in_session(fn, start=5)
    thread.join(10)
    assert outcome == {"done": True}
    assert [r["training_iteration"] for r, _ in s.buffer] == [6, 7, 8]
    assert all(r["trial_id"] == "t1" and r["time_total_s"] >= 0 for r, _ in s.buffer)


def test_trial_waits_at_a_decision_point_until_acknowledged_or_stopped():
    def fn():
        for i in range(10):
            tune.report({"v": i})
    s, thread, outcome = run_in_session(fn, points={"at": [2, 4]})
    with s.cond:
        assert s.cond.wait_for(lambda: len(s.buffer) == 2, timeout=10)
    thread.join(0.2)
    assert thread.is_alive() and len(s.buffer) == 2      # held after its 2nd report
    with s.cond:
        s.acknowledge(2)
        assert s.cond.wait_for(lambda: len(s.buffer) == 4, timeout=10)
    thread.join(0.2)
    assert thread.is_alive() and len(s.buffer) == 4      # held again at 4
    with s.cond:
        s.stop_requested = True
        s.cond.notify_all()
    thread.join(10)
    assert outcome == {"stopped": True} and len(s.buffer) == 4


def test_report_validates_its_arguments():
    errors = []

    def fn():
        for bad in (lambda: tune.report([1]), lambda: tune.report({"a": 1}, checkpoint={"x": 1})):
            try:
                bad()
            except TypeError as exc:
                errors.append(str(exc))
    _, thread, _ = run_in_session(fn)
    thread.join(10)
    assert "dict of metrics" in errors[0] and "tune.Checkpoint" in errors[1]


def test_checkpoint_dict_directory_and_pickle_round_trips(tmp_path):
    ckpt = Checkpoint.from_dict({"w": np.arange(4), "step": 3})
    again = pickle.loads(pickle.dumps(ckpt))
    assert again.to_dict()["step"] == 3 and np.array_equal(again.to_dict()["w"], np.arange(4))
    d = ckpt.to_directory(str(tmp_path / "c"))
    with open(os.path.join(d, "checkpoint.pkl"), "rb") as f:
        assert pickle.load(f)["step"] == 3                 # plain pickle on disk
    # A directory of arbitrary files travels by value (packed into the pickle).
    src = tmp_path / "files"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "model.bin").write_bytes(b"\x00\x01")
    moved = pickle.loads(pickle.dumps(Checkpoint.from_directory(str(src))))
    assert moved.path is None
    with moved.as_directory() as where:
        assert open(os.path.join(where, "sub", "model.bin"), "rb").read() == b"\x00\x01"
    with pytest.raises(ValueError, match="to_directory"):
        moved.to_dict()
    with pytest.raises(ValueError, match="does not exist"):
        Checkpoint.from_directory(str(tmp_path / "missing"))
    with pytest.raises(TypeError):
        Checkpoint.from_dict([1, 2])


def test_shared_configs_validate_and_mean_the_same_thing():
    assert FailureConfig(2).allows(2) and not FailureConfig(2).allows(3) and FailureConfig(-1).allows(10 ** 6)
    with pytest.raises(ValueError, match="max_failures"):
        FailureConfig(-2)
    rc = RunConfig(stop={"acc": 0.9})
    assert rc.should_stop("t", {"acc": 0.95}) and not rc.should_stop("t", {"acc": 0.5})
    assert RunConfig(stop=lambda tid, r: r["x"] > 1).should_stop("t", {"x": 2})
    with pytest.raises(ValueError, match="name"):
        RunConfig(name="a/b")
    with pytest.raises(ValueError, match="verbose"):
        RunConfig(verbose=5)
    sc = ScalingConfig(num_workers=2, resources_per_worker={"CPU": 2, "GPU": 1, "tpu": 1})
    assert sc.worker_options() == {"num_cpus": 2, "num_gpus": 1, "resources": {"tpu": 1}}
    assert ScalingConfig().worker_options() == {"num_cpus": 1}
    with pytest.raises(ValueError, match="num_workers"):
        ScalingConfig(num_workers=0)
    with pytest.raises(ValueError, match="placement_strategy"):
        ScalingConfig(placement_strategy="RANDOM")
