"""Helpers for the dashboard, jobs and observability tests: peers with dashboards, HTTP with and without
credentials, a non-loopback address of this machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import psutil

from cluster_util import Cluster, Peer, free_port, p2p


def non_loopback_ipv4() -> str | None:
    """An IPv4 address of this machine that is not loopback (a request to it comes from it, too)."""
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family.name == "AF_INET" and not a.address.startswith("127."):
                return a.address
    return None


def start_peers(base: str, n: int, *, num_cpus: int = 1, dashboard_host: str = "127.0.0.1",
                dashboard_hosts: dict | None = None, jobs: bool = False) -> Cluster:
    """`n` peers with dashboards (each on 8265 or the next free port); peer i's dashboard listens on
    `dashboard_hosts.get(i, dashboard_host)`."""
    cluster = Cluster(base)
    for i in range(n):
        peer = Peer(os.path.join(base, f"p{i}"), free_port())
        args = ["--home", peer.home, "--host", "127.0.0.1", "--port", str(peer.port), "--num-cpus", str(num_cpus),
                "--dashboard-host", (dashboard_hosts or {}).get(i, dashboard_host), "--dashboard-port", "8265"]
        if jobs:
            args.append("--enable-jobs")
        if i == 0:
            p2p("start", *args)
            cluster.token_file = os.path.join(peer.home, "token")
        else:
            p2p("join", cluster.peers[0].address, *args, "--token-file", cluster.token_file)
        cluster.peers.append(peer)
        cluster.pids.append(peer.pid)
    return cluster


def dashboard_port(peer: Peer) -> int:
    return int(peer.state["dashboard"].rsplit(":", 1)[1])


def token_of(cluster: Cluster) -> str:
    with open(cluster.token_file) as f:
        return f.read().strip()


def http(url: str, *, method: str = "GET", token: str | None = None, cookie: str | None = None,
         body: bytes | None = None, headers: dict | None = None, timeout_s: float = 30) -> tuple[int, bytes, dict]:
    """(status, body, headers) of one request; HTTP errors are answers, not exceptions."""
    h = dict(headers or {})
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    if cookie is not None:
        h["Cookie"] = cookie
    if body is not None:
        h.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(url, data=body, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def get_json(url: str, **kw):
    status, body, _ = http(url, **kw)
    assert status == 200, (url, status, body[:300])
    return json.loads(body)


def p2p_json(*args: str) -> object:
    return json.loads(p2p(*args, "--json").stdout)


def start_driver(code: str, path, env_extra: dict) -> subprocess.Popen:
    path.write_text(code)
    env = dict(os.environ, PYTHONUNBUFFERED="1", **env_extra)
    env.pop("P2P_TOKEN", None)
    return subprocess.Popen([sys.executable, str(path)], cwd=str(path.parent), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
