"""What `init()` adds for operators: state answers, the runtime environment, an optional dashboard.

Kept out of api.py so that init stays readable: `check_init` validates before anything starts (bad input
fails at the call, not in a worker), `after_init` wires the started runtime.
"""

from __future__ import annotations

import json
import os

from p2pcompute.errors import InvalidArgumentError

RUNTIME_ENV_VAR = "P2P_RUNTIME_ENV"   # set by the job manager for the drivers it starts


def check_init(runtime_env, include_dashboard, dashboard_port) -> dict:
    from p2pcompute import runtime_env as renv
    if runtime_env is None and os.environ.get(RUNTIME_ENV_VAR):
        try:
            runtime_env = json.loads(os.environ[RUNTIME_ENV_VAR])
        except ValueError as exc:
            raise InvalidArgumentError(f"{RUNTIME_ENV_VAR} is not JSON: {exc}") from None
    if include_dashboard is not None and not isinstance(include_dashboard, bool):
        raise InvalidArgumentError(f"include_dashboard must be True, False or None, not {include_dashboard!r}")
    if dashboard_port is not None and (isinstance(dashboard_port, bool) or not isinstance(dashboard_port, int)
                                       or not 0 <= dashboard_port < 65536):
        raise InvalidArgumentError(f"dashboard_port must be a port number, not {dashboard_port!r}")
    return renv.validate(runtime_env)


def after_init(state: dict, runtime_env: dict, include_dashboard, dashboard_host: str, dashboard_port) -> None:
    from p2pcompute.runtime import task_events
    rt = state["runtime"]
    task_events.install(rt)  # answers state requests: its pending tasks, its actors, its metrics
    if runtime_env:
        from p2pcompute import api
        from p2pcompute import runtime_env as renv
        wire, keep = renv.prepare(runtime_env, api.put)
        # Read by the I/O thread on each first push to a worker; nothing was submitted yet.
        rt.job_env["runtime_env"] = wire
        state["runtime_env_refs"] = keep
    _watch_job_peer()
    peer = state.get("peer")
    if include_dashboard and peer is not None:
        from p2pcompute.dashboard.server import DEFAULT_PORT, Dashboard
        dash = Dashboard(peer_addr=rt.peer_addr, sock_dir=peer.session_dir,
                         log_dir=os.path.join(peer.session_dir, "logs"), peer_id=rt.node_id, token=None,
                         host=dashboard_host or "127.0.0.1",
                         port=DEFAULT_PORT if dashboard_port is None else dashboard_port, jobs=False)
        dash.start()
        state["dashboard"] = dash


def dashboard_url() -> str | None:
    """The URL of the dashboard `init(include_dashboard=True)` started, if any."""
    from p2pcompute.state import STATE
    dash = STATE.get("dashboard")
    return dash.url if dash is not None else None


def _watch_job_peer() -> None:
    """A submitted job's driver ends with the peer that runs it: nobody else would ever stop it, and its
    record already says FAILED once that peer is gone."""
    pid = os.environ.get("P2P_JOB_PEER_PID")
    if not pid or not pid.isdigit():
        return
    import select
    import sys
    import threading
    try:
        fd = os.pidfd_open(int(pid))
    except (OSError, AttributeError):
        return

    def watch():
        select.select([fd], [], [])
        sys.stderr.write(f"p2pcompute: the peer running this job (pid {pid}) is gone; the job ends\n")
        sys.stderr.flush()
        os._exit(1)

    threading.Thread(target=watch, name="p2p-job-peer-watch", daemon=True).start()
