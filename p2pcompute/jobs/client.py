"""`JobSubmissionClient`: submit, watch and stop jobs through a peer's dashboard, as Ray's client does.

Everything goes over HTTP with the cluster token (job endpoints refuse requests without it, even from the
peer's own machine). A working_dir is checked and zipped here — a missing directory or one over the size
limit fails at `submit_job`, before anything is sent — then uploaded under its SHA-256 unless the peer
already has that package.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from enum import Enum

from p2pcompute.errors import AuthenticationError, InvalidArgumentError, P2PError, PeerUnavailableError

DEFAULT_ADDRESS = "http://127.0.0.1:8265"


class JobStatus(str, Enum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    STOPPED = "STOPPED"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"

    def is_terminal(self) -> bool:
        return self in (JobStatus.STOPPED, JobStatus.SUCCEEDED, JobStatus.FAILED)

    def __str__(self) -> str:
        return self.value


class JobSubmissionClient:
    def __init__(self, address: str | None = None, *, token: str | None = None, home: str | None = None,
                 timeout_s: float = 30.0):
        address = address or os.environ.get("P2P_DASHBOARD_ADDRESS") or None
        if address is None:
            address = _local_dashboard(home) or DEFAULT_ADDRESS
        if "://" not in address:
            address = "http://" + address
        self.address = address.rstrip("/")
        self.token = token or os.environ.get("P2P_TOKEN") or _home_token(home)
        if not self.token:
            raise InvalidArgumentError("job submission needs the cluster token: token=..., P2P_TOKEN, or run "
                                       "where the peer's home (with its token file) is")
        self.timeout_s = timeout_s

    # ---- HTTP -----------------------------------------------------------------------------------------

    def _call(self, method: str, path: str, body: bytes | None = None, ctype: str = "application/json",
              raw: bool = False):
        req = urllib.request.Request(self.address + path, data=body, method=method,
                                     headers={"Authorization": f"Bearer {self.token}", "Content-Type": ctype})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                data = resp.read()
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("error", exc.reason)
            except Exception:  # noqa: BLE001
                message = exc.reason
            if exc.code in (401, 403):
                raise AuthenticationError(f"{self.address} refused the request: {message}") from None
            if exc.code == 404:
                raise InvalidArgumentError(str(message)) from None
            if exc.code in (400, 409, 413):
                raise InvalidArgumentError(f"the job was refused: {message}") from None
            raise P2PError(f"{method} {path} failed ({exc.code}): {message}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise PeerUnavailableError(f"cannot reach the dashboard at {self.address}: {exc}") from None
        return data if raw else json.loads(data or b"null")

    # ---- Ray's API ------------------------------------------------------------------------------------

    def submit_job(self, *, entrypoint: str | list, runtime_env: dict | None = None,
                   submission_id: str | None = None, metadata: dict | None = None, progress=None) -> str:
        from p2pcompute import runtime_env as renv
        env = renv.validate(runtime_env)
        wire = {k: v for k, v in env.items() if k not in ("working_dir", "excludes", "py_modules")}
        if env.get("py_modules"):
            raise InvalidArgumentError("py_modules is not supported for submitted jobs; put the modules in the "
                                       "working_dir, or pass py_modules to init() in the entrypoint")
        if env.get("working_dir"):
            sha, data = renv.package(env["working_dir"], env.get("excludes") or (), progress=progress)
            present = self._call("POST", f"/api/packages/{sha}", b"", "application/octet-stream").get("present")
            if not present:
                self._call("POST", f"/api/packages/{sha}", data, "application/zip")
            wire["working_dir"] = sha
        spec = {"entrypoint": entrypoint, "runtime_env": wire, "submission_id": submission_id,
                "metadata": metadata or {}}
        return self._call("POST", "/api/jobs", json.dumps(spec).encode())["job_id"]

    def get_job_info(self, job_id: str) -> dict:
        return self._call("GET", f"/api/jobs/{job_id}")

    def get_job_status(self, job_id: str) -> JobStatus:
        return JobStatus(self.get_job_info(job_id)["state"])

    def get_job_logs(self, job_id: str) -> str:
        return self._call("GET", f"/api/jobs/{job_id}/logs?offset=0")["text"]

    def tail_job_logs(self, job_id: str, poll_s: float = 0.5):
        """Yield the job's output as it is written, until the job ends."""
        offset = 0
        while True:
            chunk = self._call("GET", f"/api/jobs/{job_id}/logs?offset={offset}")
            if chunk["text"]:
                yield chunk["text"]
            offset = chunk["next_offset"]
            if chunk["done"] and not chunk["text"]:
                return
            if not chunk["text"]:
                time.sleep(poll_s)  # polling a log another process writes

    def stop_job(self, job_id: str) -> bool:
        return bool(self._call("POST", f"/api/jobs/{job_id}/stop", b"{}")["stopped"])

    def list_jobs(self) -> list[dict]:
        return self._call("GET", "/api/jobs")

    def wait(self, job_id: str, timeout_s: float = 600.0) -> JobStatus:
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.get_job_status(job_id)
            if status.is_terminal() or time.monotonic() > deadline:
                return status
            time.sleep(0.2)  # polling another process's job, bounded by the deadline


def _home_token(home: str | None) -> str | None:
    try:
        from p2pcompute.runtime.home import Home
        return Home(home).read_token()
    except Exception:  # noqa: BLE001
        return None


def _local_dashboard(home: str | None) -> str | None:
    try:
        from p2pcompute.runtime.home import Home
        state = Home(home).running()
    except Exception:  # noqa: BLE001
        return None
    return (state or {}).get("dashboard")
