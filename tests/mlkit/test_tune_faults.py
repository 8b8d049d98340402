"""Failures with real processes: the driver SIGKILLed mid-experiment and resumed with `Tuner.restore`, and a
trial's peer SIGKILLed in a 3-peer cluster (the trial restarts on another peer from its checkpoint)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap

import psutil
import pytest

from cluster_util import Cluster
from itest_util import alive, wait_until

pytestmark = [pytest.mark.mlkit, pytest.mark.integration]

TRAINABLE = """
import json, os, sys, time
import p2pcompute as p2p
from p2pcompute.mlkit import tune

MARKS = sys.argv[2]

def trainable(config):
    ckpt = tune.get_checkpoint()
    start = ckpt.to_dict()["step"] + 1 if ckpt else 0
    node = p2p.get_runtime_context().node_id
    with open(os.path.join(MARKS, tune.get_trial_id() + ".starts"), "a") as f:
        f.write(json.dumps({"start": start, "node": node}) + "\\n")
    for step in range(start, config["steps"]):
        time.sleep(config["sleep_s"])
        tune.report({"step": step, "score": config["k"] * step, "node": node},
                    checkpoint=tune.Checkpoint.from_dict({"step": step}))
"""


def write_driver(tmp_path, body: str) -> str:
    path = tmp_path / "tune_driver.py"
    path.write_text(TRAINABLE + textwrap.dedent(body))
    return str(path)


def spawn(script: str, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("P2P_ADDRESS", None)
    env.pop("P2P_TOKEN", None)
    return subprocess.Popen([sys.executable, script, *args], cwd=os.path.dirname(script), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def read_state(exp: str) -> dict:
    try:
        with open(os.path.join(exp, "experiment_state.json")) as f:
            return {t["trial_id"]: t for t in json.load(f)["trials"]}
    except (OSError, ValueError):
        return {}


def starts(marks, trial_id) -> list[dict]:
    path = os.path.join(marks, f"{trial_id}.starts")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.mark.timeout(120)
def test_driver_killed_then_restore_keeps_finished_trials(tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    exp = str(tmp_path / "results" / "exp")
    script = write_driver(tmp_path, """
        p2p.init(num_cpus=2)
        exp = sys.argv[1]
        if len(sys.argv) > 3 and sys.argv[3] == "restore":
            tuner = tune.Tuner.restore(exp, trainable)
        else:
            tuner = tune.Tuner(trainable,
                               param_space={"k": tune.grid_search(list(range(6))), "steps": 12, "sleep_s": 0.05},
                               tune_config=tune.TuneConfig(metric="score", mode="max", max_concurrent_trials=2),
                               run_config=tune.RunConfig(name=os.path.basename(exp),
                                                         storage_path=os.path.dirname(exp), verbose=0))
        grid = tuner.fit()
        print("RESULT", json.dumps({r.trial_id: [r.status, r.metrics.get("step")] for r in grid}), flush=True)
    """)
    first = spawn(script, exp, str(marks))
    try:
        # Kill once some trials have finished and others are mid-run with a checkpoint.
        def mid_experiment():
            state = read_state(exp)
            done = [t for t in state.values() if t["status"] == "TERMINATED"]
            running = [t for t in state.values() if t["status"] == "RUNNING" and t["checkpoint_iteration"] >= 2]
            return len(done) >= 2 and running
        wait_until(mid_experiment, 60, what="two finished trials and one running with a checkpoint")
        family = [first.pid] + [p.pid for p in psutil.Process(first.pid).children(recursive=True)]
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    # Its embedded peer and trial workers go away with it (no stray trial keeps writing).
    wait_until(lambda: not alive(family), 30, what="the killed driver's peer and workers to exit")
    at_kill = read_state(exp)
    finished = {tid for tid, t in at_kill.items() if t["status"] == "TERMINATED"}
    interrupted = {tid: t["checkpoint_iteration"] for tid, t in at_kill.items() if t["status"] == "RUNNING"}
    assert len(finished) >= 2 and interrupted

    second = spawn(script, exp, str(marks), "restore")
    out, _ = second.communicate(timeout=90)
    assert second.returncode == 0, out
    result = json.loads(out.split("RESULT", 1)[1].strip().splitlines()[0])
    assert len(result) == 6
    assert all(status == "TERMINATED" and step == 11 for status, step in result.values()), result
    for tid in finished:
        assert len(starts(marks, tid)) == 1, f"finished trial {tid} was run again"
    for tid, ckpt_iter in interrupted.items():
        runs = starts(marks, tid)
        if ckpt_iter:
            # Resumed after its checkpoint at or after the one saved when the driver died, not from 0.
            assert runs[-1]["start"] >= ckpt_iter, (tid, runs, ckpt_iter)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_trial_restarts_on_another_peer_after_its_peer_is_killed(tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    exp = str(tmp_path / "results" / "peerkill")
    base = tempfile.mkdtemp(prefix="p2pt-", dir="/tmp")  # short: peers' Unix socket paths must fit
    cluster = Cluster(base)
    try:
        head = cluster.start(num_cpus=1)
        # Only peers 1 and 2 have a "slot": the trial never lands on the peer the driver attaches to.
        workers = [cluster.start(num_cpus=1, resources='{"slot": 1}') for _ in range(2)]
        script = write_driver(tmp_path, f"""
            p2p.init(address={head.address!r}, token=open({cluster.token_file!r}).read().strip())
            exp = sys.argv[1]
            grid = tune.Tuner(tune.with_resources(trainable, {{"num_cpus": 1, "slot": 1}}),
                              param_space={{"k": 1, "steps": 60, "sleep_s": 0.05}},
                              tune_config=tune.TuneConfig(metric="score", mode="max"),
                              run_config=tune.RunConfig(name=os.path.basename(exp),
                                                        storage_path=os.path.dirname(exp), verbose=1,
                                                        failure_config=tune.FailureConfig(max_failures=2))).fit()
            r = grid[0]
            print("RESULT", json.dumps([r.status, r.num_failures, r.metrics.get("step")]), flush=True)
        """)
        driver = spawn(script, exp, str(marks))
        try:
            def trial_running():
                state = read_state(exp)
                t = next(iter(state.values()), None)
                return t if t and t["status"] == "RUNNING" and t["checkpoint_iteration"] >= 5 else None
            trial = wait_until(trial_running, 90, what="the trial to run with a few checkpoints")
            first_node = starts(marks, trial["trial_id"])[0]["node"]
            victim = next(p for p in workers if p.peer_id == first_node)
            os.killpg(os.getpgid(victim.pid), signal.SIGKILL)
            out, _ = driver.communicate(timeout=120)
        finally:
            if driver.poll() is None:
                driver.kill()
        assert driver.returncode == 0, out
        status, failures, step = json.loads(out.split("RESULT", 1)[1].strip().splitlines()[0])
        assert (status, failures, step) == ("TERMINATED", 1, 59), out
        runs = starts(marks, trial["trial_id"])
        assert len(runs) == 2
        assert runs[1]["node"] != first_node            # restarted elsewhere ...
        assert runs[1]["start"] >= 5                    # ... from its checkpoint, not from scratch
    finally:
        cluster.stop_all()
        shutil.rmtree(base, ignore_errors=True)
