"""Jobs and runtime environments on two peers with distinct homes.

The driver's code lives in a directory that is not on any peer's path (and is deleted once shipped): tasks
on both peers import a helper from the working_dir and a package from py_modules, see the env_vars, and run
in the unpacked package. Jobs are submitted through the dashboard of one peer (JobSubmissionClient and
`p2p job`), their logs read back, one stopped, one failing, one lost with its peer.
"""

from __future__ import annotations

import json
import os
import signal
import textwrap

import psutil
import pytest

from cluster_util import p2p, wait_for
from dash_util import dashboard_port, p2p_json, start_peers, token_of
from itest_util import run_driver
from p2pcompute.errors import AuthenticationError, InvalidArgumentError
from p2pcompute.jobs import JobStatus, JobSubmissionClient

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("jobs"))
    cluster = start_peers(base, 2, jobs=True)
    try:
        for peer in cluster.peers:
            wait_for(lambda: sum(s == "alive" for s in peer.states().values()) == 2, 30, "2 alive peers")
        yield cluster
    finally:
        cluster.stop_all()


def _client(cluster, i: int = 0, token: str | None = None) -> JobSubmissionClient:
    return JobSubmissionClient(f"http://127.0.0.1:{dashboard_port(cluster.peers[i])}",
                               token=token or token_of(cluster))


def _write(directory, files: dict) -> str:
    for name, text in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return str(directory)


def test_working_dir_and_py_modules_reach_tasks_on_both_peers(two, tmp_path):
    wd = _write(tmp_path / "project", {"helper.py": "def triple(x):\n    return 3 * x\n",
                                       "data.txt": "shipped\n", "big.bin": "x" * 1000})
    mods = _write(tmp_path / "libs", {"mylib/__init__.py": "NAME = 'mylib'\n"})
    driver_dir = tmp_path / "driver"
    driver_dir.mkdir()
    out = run_driver(f"""
        import json, os, shutil, sys
        import p2pcompute as p2p
        from p2pcompute.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        os.environ["P2P_HOME"] = {two.peers[0].home!r}
        p2p.init(address="auto", runtime_env={{"working_dir": {wd!r}, "py_modules": [{mods + '/mylib'!r}],
                                                "env_vars": {{"JOB_FLAVOUR": "lemon"}}, "excludes": ["*.bin"]}})
        # The sources are gone: only the copies in the object store can reach the workers.
        shutil.rmtree({wd!r}); shutil.rmtree({mods!r})
        try:
            import helper
            sys.exit("the driver could import helper: the test proves nothing")
        except ImportError:
            pass

        @p2p.remote
        def where(x):
            import helper, mylib
            return {{"value": helper.triple(x), "lib": mylib.NAME, "cwd": os.getcwd(),
                     "data": open("data.txt").read().strip(), "big": os.path.exists("big.bin"),
                     "flavour": os.environ.get("JOB_FLAVOUR"), "node": p2p.get_runtime_context().get_node_id()}}

        peers = sorted(n["NodeID"] for n in p2p.nodes() if n["Alive"])
        refs = [where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(p, soft=False)).remote(i)
                for i, p in enumerate(peers)]
        print(json.dumps({{"peers": peers, "results": p2p.get(refs)}}))
    """, driver_dir, name="drv.py", timeout_s=90).stdout
    info = json.loads(out.strip().splitlines()[-1])
    results = info["results"]
    assert [r["node"] for r in results] == info["peers"]
    assert [r["value"] for r in results] == [0, 3]
    assert all(r["lib"] == "mylib" and r["data"] == "shipped" and r["flavour"] == "lemon" for r in results)
    assert not any(r["big"] for r in results)  # excluded
    homes = {p.peer_id: p.home for p in two.peers}
    for r in results:  # each peer unpacked its own copy, under its own home
        assert r["cwd"].startswith(os.path.join(homes[r["node"]], "run", "runtime_envs") + os.sep)


def test_submit_stream_logs_and_status(two, tmp_path):
    wd = _write(tmp_path / "job", {"train.py": """
        import os, p2pcompute as p2p
        from steps import step
        p2p.init()
        print("answer", sum(p2p.get([step.remote(i) for i in range(5)])), os.environ["RUN_TAG"], flush=True)
    """, "steps.py": """
        import p2pcompute as p2p
        @p2p.remote
        def step(i):
            return i * 10
    """})
    client = _client(two, 1)
    job_id = client.submit_job(entrypoint="python train.py", runtime_env={"working_dir": wd,
                                                                          "env_vars": {"RUN_TAG": "t1"}})
    text = "".join(client.tail_job_logs(job_id))
    assert "answer 100 t1" in text
    assert client.wait(job_id, 30) == JobStatus.SUCCEEDED
    info = client.get_job_info(job_id)
    assert info["peer"] == two.peers[1].peer_id and info["entry"] == "python train.py"
    # the CLI, through the other peer's home: the record is in the cluster's table
    rows = p2p_json("list", "jobs", "--home", two.peers[0].home)
    assert [r["state"] for r in rows if r["job_id"] == job_id] == ["SUCCEEDED"]
    status = p2p("job", "status", job_id, "--address", client.address, "--token-file", two.token_file).stdout
    assert "SUCCEEDED" in status
    logs = p2p("job", "logs", job_id, "--address", client.address, "--token-file", two.token_file).stdout
    assert "answer 100 t1" in logs
    # `p2p job submit` waits, streams the output and exits with the job's outcome
    proc = p2p("job", "submit", "--home", two.peers[0].home, "--working-dir", wd, "--env", "RUN_TAG=cli", "--",
               "python", "train.py", timeout_s=90)
    assert "answer 100 cli" in proc.stdout and "SUCCEEDED" in proc.stderr


def test_stop_and_failure_are_reported(two, tmp_path):
    wd = _write(tmp_path / "loop", {"loop.py": """
        import time
        print("started", flush=True)
        while True:
            time.sleep(0.05)
    """, "bad.py": "raise SystemExit(3)\n"})
    client = _client(two, 0)
    job_id = client.submit_job(entrypoint=["python", "loop.py"], runtime_env={"working_dir": wd})
    wait_for(lambda: "started" in client.get_job_logs(job_id), 30, "the job's first line")
    assert client.get_job_status(job_id) == JobStatus.RUNNING
    assert client.stop_job(job_id)
    assert client.wait(job_id, 20) == JobStatus.STOPPED
    failing = client.submit_job(entrypoint="python bad.py", runtime_env={"working_dir": wd})
    assert client.wait(failing, 30) == JobStatus.FAILED
    assert "code 3" in client.get_job_info(failing)["message"]


def test_bad_submissions_fail_at_once(two, tmp_path):
    client = _client(two, 0)
    with pytest.raises(InvalidArgumentError, match="not a directory"):
        client.submit_job(entrypoint="python x.py", runtime_env={"working_dir": str(tmp_path / "missing")})
    with pytest.raises(InvalidArgumentError, match="unknown key"):
        client.submit_job(entrypoint="python x.py", runtime_env={"workdir": "."})
    with pytest.raises(InvalidArgumentError, match="entrypoint"):
        client.submit_job(entrypoint="")
    with pytest.raises(AuthenticationError):
        _client(two, 0, token="wrong-token").submit_job(entrypoint="true")
    with pytest.raises(InvalidArgumentError, match="no job"):
        client.get_job_info("job-nope")


def test_a_job_lost_with_its_peer_is_reported_failed(two, tmp_path):
    wd = _write(tmp_path / "forever", {"forever.py": """
        import time
        import p2pcompute as p2p
        p2p.init()
        print("attached", flush=True)
        while True:
            time.sleep(0.05)
    """})
    client = _client(two, 1)
    job_id = client.submit_job(entrypoint="python forever.py", runtime_env={"working_dir": wd})
    wait_for(lambda: "attached" in client.get_job_logs(job_id), 30, "the job's driver attached")
    assert _job_drivers(two.peers[1].home)
    os.kill(two.peers[1].pid, signal.SIGKILL)

    def state():
        rows = p2p_json("list", "jobs", "--home", two.peers[0].home)
        return {r["job_id"]: r for r in rows}.get(job_id, {}).get("state") == "FAILED" and rows
    rows = wait_for(state, 40, "the job reported FAILED after its peer died")
    row = next(r for r in rows if r["job_id"] == job_id)
    assert two.peers[1].peer_id in row["message"]
    # and its driver does not outlive its peer
    wait_for(lambda: not _job_drivers(two.peers[1].home), 20, "the job's driver to exit")


def _job_drivers(home: str) -> list[int]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if "forever.py" in " ".join(p.info["cmdline"] or ()) and p.cwd().startswith(home):
                out.append(p.pid)
        except (psutil.Error, OSError):
            pass
    return out
