"""The job manager of one peer: runs submitted entrypoints as drivers and keeps their records.

Theory of operation. A submission (through the dashboard's `POST /api/jobs`, which always needs the token)
names an entrypoint (a shell command, as in Ray), an optional working_dir package uploaded before
(`POST /api/packages/<sha256>`, content-addressed: a package already here is not sent again), env_vars and
the rest of a runtime_env. The manager unpacks the package into this peer's cache, starts the entrypoint
in its own session with cwd = the package, `P2P_ADDRESS=auto` and `P2P_HOME` = this peer's home (so its
`init()` attaches here) and `P2P_RUNTIME_ENV` (so its workers on every peer get the same code), and sends
its output to `HOME/logs/job-<id>.log`.

Records live in the replicated table (`job_register` / `job_update`) with the peer that runs the job: any
peer can list them, and `util.state.job_rows` reports a job whose peer died as FAILED. A watcher thread
per job writes the final state (SUCCEEDED, FAILED with the exit code, or STOPPED).
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shlex
import signal
import subprocess
import sys
import threading
import time

log = logging.getLogger("p2pcompute.jobs")

_SHA = re.compile(r"^[0-9a-f]{64}$")
_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
STOP_GRACE_S = 5.0


class JobManager:
    def __init__(self, *, home: str, link, peer_id: str):
        self.home = home
        self.link = link
        self.peer_id = peer_id
        self.pkg_dir = os.path.join(home, "runtime_envs")
        self.log_dir = os.path.join(home, "logs")
        self.jobs: dict[str, dict] = {}
        self.procs: dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        os.makedirs(self.pkg_dir, exist_ok=True)

    def stop(self) -> None:
        # Drivers die with their peer anyway (their peer is gone); stop them cleanly if we can.
        for job_id in list(self.procs):
            self.stop_job(job_id, wait=False)

    # ---- packages ---------------------------------------------------------------------------------------

    def package_path(self, sha: str) -> str:
        return os.path.join(self.pkg_dir, sha)

    def store_package(self, sha: str, data: bytes) -> dict:
        import hashlib

        from p2pcompute import runtime_env
        from p2pcompute.dashboard.server import HTTPError
        if not data:
            return {"sha": sha, "present": os.path.isdir(self.package_path(sha))}
        if hashlib.sha256(data).hexdigest() != sha:
            raise HTTPError(400, "the package's SHA-256 does not match its name")
        runtime_env.unpack(data, self.package_path(sha))
        return {"sha": sha, "present": True, "size": len(data)}

    # ---- jobs -----------------------------------------------------------------------------------------

    def submit(self, spec: dict) -> dict:
        from p2pcompute import runtime_env as renv
        from p2pcompute.dashboard.server import HTTPError
        if not isinstance(spec, dict):
            raise HTTPError(400, "the job spec must be a JSON object")
        entrypoint = spec.get("entrypoint")
        if isinstance(entrypoint, list) and all(isinstance(a, str) for a in entrypoint) and entrypoint:
            entrypoint = shlex.join(entrypoint)
        if not isinstance(entrypoint, str) or not entrypoint.strip():
            raise HTTPError(400, "entrypoint must be a non-empty command, e.g. 'python train.py'")
        job_id = spec.get("submission_id") or f"job-{secrets.token_hex(4)}"
        if not isinstance(job_id, str) or not _ID.match(job_id):
            raise HTTPError(400, f"submission_id {job_id!r} must be 1-128 letters, digits or _.:-")
        env_spec = spec.get("runtime_env") or {}
        if not isinstance(env_spec, dict):
            raise HTTPError(400, "runtime_env must be an object")
        wd_sha = env_spec.get("working_dir")
        cwd = None
        if wd_sha is not None:
            if not isinstance(wd_sha, str) or not _SHA.match(wd_sha):
                raise HTTPError(400, "runtime_env working_dir must be the SHA-256 of an uploaded package")
            cwd = self.package_path(wd_sha)
            if not os.path.isdir(cwd):
                raise HTTPError(400, f"package {wd_sha[:12]} was not uploaded to this peer")
        driver_env = {k: v for k, v in env_spec.items() if k not in ("working_dir",)}
        if cwd is not None:
            driver_env["working_dir"] = cwd
        try:
            renv.validate(driver_env)
        except ValueError as exc:
            raise HTTPError(400, str(exc)) from None
        with self._lock:
            if job_id in self.jobs:
                raise HTTPError(409, f"job {job_id} already exists")
            record = {"job_id": job_id, "submission_id": job_id, "entry": entrypoint, "peer": self.peer_id,
                      "state": "PENDING", "start_time": time.time(), "type": "SUBMISSION",
                      "metadata": spec.get("metadata") if isinstance(spec.get("metadata"), dict) else {}}
            self.jobs[job_id] = record
        self._table("job_register", job_id, record)
        env = dict(os.environ)
        env.pop("P2P_CLUSTER_TOKEN", None)
        env.update({"P2P_ADDRESS": "auto", "P2P_HOME": self.home, "P2P_JOB_ID": job_id,
                    "P2P_JOB_PEER_PID": str(os.getpid()),
                    "P2P_RUNTIME_ENV": json.dumps(driver_env), "PYTHONUNBUFFERED": "1"})
        env.update(env_spec.get("env_vars") or {})
        # `python` in an entrypoint means the interpreter this cluster runs on.
        env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
        log_path = os.path.join(self.log_dir, f"job-{job_id}.log")
        try:
            with open(log_path, "ab") as out:
                proc = subprocess.Popen(["/bin/sh", "-c", entrypoint], cwd=cwd or self.home, env=env,
                                        stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=True, close_fds=True)
        except OSError as exc:
            self._finish(job_id, "FAILED", f"could not start: {exc}")
            raise HTTPError(400, f"could not start the entrypoint: {exc}") from None
        self.procs[job_id] = proc
        self._update(job_id, state="RUNNING", pid=proc.pid)
        threading.Thread(target=self._watch, args=(job_id, proc), daemon=True, name=f"p2p-job-{job_id}").start()
        return {"job_id": job_id, "submission_id": job_id}

    def _watch(self, job_id: str, proc: subprocess.Popen) -> None:
        code = proc.wait()
        with self._lock:
            stopped = self.jobs.get(job_id, {}).get("stopping")
        if stopped:
            self._finish(job_id, "STOPPED", "stopped by request")
        elif code == 0:
            self._finish(job_id, "SUCCEEDED", "")
        else:
            self._finish(job_id, "FAILED", f"the entrypoint exited with code {code}")
        self.procs.pop(job_id, None)

    def _finish(self, job_id: str, state: str, message: str) -> None:
        self._update(job_id, state=state, message=message, end_time=time.time())

    def _update(self, job_id: str, **fields) -> None:
        with self._lock:
            rec = self.jobs.get(job_id)
            if rec is not None:
                rec.update(fields)
        self._table("job_update", job_id, {k: v for k, v in fields.items() if k != "stopping"})

    def _table(self, op: str, job_id: str, record: dict) -> None:
        try:
            self.link.table((op, job_id, record), timeout_s=10.0)
        except Exception as exc:  # noqa: BLE001 - the local record still answers for this peer
            log.warning("could not record job %s in the table: %s", job_id, exc)

    def status(self, job_id: str) -> dict:
        from p2pcompute.dashboard.server import HTTPError
        with self._lock:
            rec = self.jobs.get(job_id)
            if rec is not None:
                return {k: v for k, v in rec.items() if k != "stopping"}
        try:
            rec = self.link.table(("job_get", job_id), timeout_s=10.0)
        except Exception:  # noqa: BLE001
            rec = None
        if not rec:
            raise HTTPError(404, f"no job {job_id}")
        from p2pcompute.util.state import job_rows
        return job_rows([rec], self.link.nodes(10.0))[0]

    def logs(self, job_id: str, offset: int) -> dict:
        from p2pcompute.dashboard import logs
        from p2pcompute.dashboard.server import HTTPError
        path = os.path.join(self.log_dir, f"job-{job_id}.log")
        if job_id not in self.jobs or not os.path.exists(path):
            raise HTTPError(404, f"job {job_id} did not run on this peer (its logs live on the peer that ran it)")
        text, nxt = logs.read_from(path, offset)
        state = self.jobs[job_id]["state"]
        return {"text": text, "next_offset": nxt, "state": state,
                "done": state in ("SUCCEEDED", "FAILED", "STOPPED")}

    def stop_job(self, job_id: str, wait: bool = False) -> dict:
        from p2pcompute.dashboard.server import HTTPError
        proc = self.procs.get(job_id)
        with self._lock:
            rec = self.jobs.get(job_id)
            if rec is None:
                raise HTTPError(404, f"no job {job_id} on this peer")
            if proc is None or proc.poll() is not None:
                return {"job_id": job_id, "stopped": False, "state": rec["state"]}
            rec["stopping"] = True
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

        def escalate():
            try:
                proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

        if wait:
            escalate()
        else:
            threading.Thread(target=escalate, daemon=True).start()
        return {"job_id": job_id, "stopped": True}
