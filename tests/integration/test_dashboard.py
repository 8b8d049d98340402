"""A 3-peer cluster seen through its windows: `p2p list/summary/metrics/timeline`, every dashboard endpoint
(and who may use it), and the page in a real headless Chromium.

One driver attaches to peer 0 and runs a known graph: 12 `obs_map` tasks pinned 4 to each peer, one
`obs_reduce` over them, and an `ObsHolder` actor pinned to peer 2; it stays alive while the tests look.
Counts are exact because the graph is known and the cluster is this module's own. The last test kills
peer 2 and watches the page change.
"""

from __future__ import annotations

import json
import os
import shutil
import signal

import pytest

from cluster_util import p2p, wait_for
from dash_util import (dashboard_port, get_json, http, non_loopback_ipv4, p2p_json, start_driver, start_peers,
                       token_of)
from p2pcompute.dashboard.metrics_text import parse
from p2pcompute.dashboard.peer_link import PeerLink
from p2pcompute.util import state

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

DRIVER = r'''
import json, os, sys, time
import p2pcompute as p2p
from p2pcompute.util.metrics import Counter
from p2pcompute.util.scheduling_strategies import NodeAffinitySchedulingStrategy

p2p.init(address="auto")
peers = sorted(n["NodeID"] for n in p2p.nodes() if n["Alive"])
assert len(peers) == 3, peers

@p2p.remote
def obs_map(i):
    Counter("obs_map_calls", "maps run", tag_keys=("stage",)).inc(1, {"stage": "map"})
    return i

@p2p.remote
def obs_reduce(*xs):
    return sum(xs)

@p2p.remote(num_cpus=0)
class ObsHolder:
    def pid(self):
        return os.getpid()

on = lambda p: NodeAffinitySchedulingStrategy(p, soft=False)
maps = [obs_map.options(scheduling_strategy=on(p)).remote(i) for i, p in enumerate(peers * 4)]
total = p2p.get(obs_reduce.remote(*maps))
holder = ObsHolder.options(scheduling_strategy=on(peers[2])).remote()
pid = p2p.get(holder.pid.remote())
print(json.dumps({"peers": peers, "total": total, "pid": pid}), flush=True)
while not os.path.exists(sys.argv[0] + ".stop"):
    time.sleep(0.05)  # keep the actor (and this job) alive while the tests look
'''


@pytest.fixture(scope="module")
def obs(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("obs"))
    cluster = start_peers(base, 3, dashboard_hosts={0: "0.0.0.0"})
    driver = None
    try:
        for peer in cluster.peers:
            wait_for(lambda: sum(s == "alive" for s in peer.states().values()) == 3, 30, "3 alive peers")
        script = tmp_path_factory.mktemp("drv") / "obs_driver.py"
        driver = start_driver(DRIVER, script, {"P2P_HOME": cluster.peers[0].home})
        line = driver.stdout.readline()
        info = json.loads(line) if line.startswith("{") else pytest.fail(f"driver failed: {line}{driver.stdout.read()}")
        info.update(cluster=cluster, token=token_of(cluster), stop=str(script) + ".stop",
                    urls=[f"http://127.0.0.1:{dashboard_port(p)}" for p in cluster.peers])
        assert info["total"] == sum(range(12))
        yield info
    finally:
        if driver is not None:
            open(str(script) + ".stop", "w").close()
            try:
                driver.wait(15)
            except Exception:  # noqa: BLE001
                driver.kill()
        cluster.stop_all()


def _by_peer(rows, key="node_id"):
    out = {}
    for r in rows:
        out[r[key]] = out.get(r[key], 0) + 1
    return out


def test_each_peer_serves_a_dashboard_and_status_says_where(obs):
    ports = {dashboard_port(p) for p in obs["cluster"].peers}
    assert len(ports) == 3  # 8265 was taken by the first: the others took the next free ports
    peer = obs["cluster"].peers[1]
    assert f"dashboard: {peer.state['dashboard']}" in p2p("status", "--home", peer.home).stdout


def test_list_and_summary_cover_the_cluster_from_any_peer(obs):
    peers = obs["peers"]
    home = obs["cluster"].peers[1].home   # not the driver's peer: the answers come from everyone
    link = PeerLink.to_home(home)   # what the p2p commands use, without starting a process per question
    try:
        wait_for(lambda: len(state.list_tasks({"name": "obs_map"}, source=link)) == 12, 20, "12 maps")
        summary = state.summarize_tasks(source=link)["cluster"]["summary"]
        assert summary["obs_map"]["state_counts"] == {"FINISHED": 12}
        assert summary["obs_reduce"]["state_counts"] == {"FINISHED": 1}
        assert summary["ObsHolder.pid"]["state_counts"] == {"FINISHED": 1}
        actors = state.list_actors({"class_name": "ObsHolder"}, source=link)
        assert [(a["state"], a["node_id"], a["pid"]) for a in actors] == [("ALIVE", peers[2], obs["pid"])]
        nodes = state.list_nodes(source=link)
        assert sorted(n["node_id"] for n in nodes if n["state"] == "ALIVE") == peers
        jobs = state.list_jobs(source=link)
        assert any(j["state"] == "RUNNING" and j["entry"].endswith("obs_driver.py") for j in jobs)
    finally:
        link.close()
    maps = p2p_json("list", "tasks", "--home", home, "-f", "name=obs_map", "-f", "state=FINISHED")
    assert _by_peer(maps) == {p: 4 for p in peers}
    table = p2p("summary", "tasks", "--home", home).stdout
    assert "obs_reduce" in table and "FINISHED: 1" in table and "FINISHED: 12" in table


def test_metrics_are_prometheus_text_from_every_peer(obs):
    peers = obs["peers"]

    def scrape():
        status, body, headers = http(obs["urls"][1] + "/metrics?cluster=1")
        assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
        samples = parse(body.decode())
        finished = {p: samples.get(("p2p_tasks_total", (("kind", "task"), ("peer", p), ("state", "finished"))), 0)
                    for p in peers}
        calls = {p: samples.get(("obs_map_calls", (("peer", p), ("stage", "map")))) for p in peers}
        # On a loaded machine a worker may answer a scrape late (it is then left out): ask again.
        return (finished, calls, samples) if sum(finished.values()) >= 13 and None not in calls.values() else None

    # Counters count attempts: a task run twice (retried after a lost reply on a loaded machine) counts twice.
    finished, calls, samples = wait_for(scrape, 30, "every peer's task and user metrics")
    assert all(n >= 4 for n in finished.values()) and all(n >= 4 for n in calls.values()), (finished, calls)
    for p in peers:
        assert samples[("p2p_members", (("peer", p), ("state", "alive")))] == 3
        assert ("p2p_store_capacity_bytes", (("peer", p),)) in samples
    assert sum(v for (name, _), v in samples.items() if name == "p2p_table_leader") == 1
    # one peer's own scrape has only its own series; the CLI prints the cluster's
    local = parse(http(obs["urls"][2] + "/metrics")[1].decode())
    assert {dict(labels)["peer"] for (_, labels) in local} == {obs["cluster"].peers[2].peer_id}
    cli = parse(p2p("metrics", "--home", obs["cluster"].peers[0].home).stdout)
    assert sum(v for (name, _), v in cli.items() if name == "p2p_tasks_total") >= 13


def test_timeline_covers_every_task_with_sane_nesting(obs, tmp_path):
    out = tmp_path / "trace.json"
    p2p("timeline", "--home", obs["cluster"].peers[2].home, "-o", str(out))
    trace = json.loads(out.read_text())
    assert trace == trace and isinstance(trace, list)
    names = {e["args"]["name"] for e in trace if e["ph"] == "M" and e["name"] == "process_name"}
    assert names == {f"peer {p}" for p in obs["peers"]}
    tasks = [e for e in trace if e["ph"] == "X" and e["cat"] != "phase"]
    phases = [e for e in trace if e["ph"] == "X" and e["cat"] == "phase"]
    assert sorted(e["name"] for e in tasks if e["name"].startswith("obs_")) == ["obs_map"] * 12 + ["obs_reduce"]
    by_task = {}
    for ph in phases:
        by_task.setdefault(ph["args"]["task_id"], []).append(ph)
    eps = 1.0  # microseconds: timestamps are rounded to ns then divided
    for t in tasks:
        kids = sorted(by_task[t["args"]["task_id"]], key=lambda e: e["ts"])
        assert [k["name"] for k in kids] == ["fetch args", "execute", "store result"]
        for k in kids:
            assert (k["pid"], k["tid"]) == (t["pid"], t["tid"])
            assert t["ts"] - eps <= k["ts"] and k["ts"] + k["dur"] <= t["ts"] + t["dur"] + eps
    # one worker runs one task at a time: its task slices never overlap
    lanes = {}
    for t in tasks:
        lanes.setdefault((t["pid"], t["tid"]), []).append((t["ts"], t["ts"] + t["dur"]))
    for spans in lanes.values():
        spans.sort()
        assert all(a_end <= b_start + eps for (_, a_end), (b_start, _) in zip(spans, spans[1:]))
    # the reduce ran after every map ended (same machine, one clock)
    reduce_start = next(t["ts"] for t in tasks if t["name"] == "obs_reduce")
    assert all(t["ts"] + t["dur"] <= reduce_start + eps for t in tasks if t["name"] == "obs_map")
    # the dashboard serves the same trace
    via_http = get_json(obs["urls"][0] + "/api/timeline")
    assert sum(1 for e in via_http if e.get("name") == "obs_map" and e["ph"] == "X") == 12


def test_endpoints_answer_with_the_cluster(obs):
    url = obs["urls"][0]
    tasks = get_json(url + "/api/tasks")
    assert tasks["by_name"]["obs_map"] == {"FINISHED": 12}
    actors = get_json(url + "/api/actors")
    assert [a["node_id"] for a in actors if a["class_name"] == "ObsHolder"] == [obs["peers"][2]]
    assert len(get_json(url + "/api/nodes")) == 3
    assert {p["peer"] for p in get_json(url + "/api/objects")["peers"]} == set(obs["peers"])
    logs = get_json(url + "/api/logs")
    assert "peer.log" in {f["name"] for f in logs}
    status, body, _ = http(url + "/api/logs/peer.log")
    assert status == 200 and b"peer" in body
    assert http(url + "/api/logs/..%2Fpeer.json")[0] == 404
    page = http(url + "/")[1].decode()
    assert "<table id=\"peers\"" in page and "http://" not in page.split("<script>")[1].replace(
        "https://ui.perfetto.dev", "")  # no external resources


def test_logs_command_finds_files_and_a_tasks_worker(obs):
    peer0 = obs["cluster"].peers[0]
    files = {f["file"] for f in p2p_json("logs", "--home", peer0.home)}
    assert "peer.log" in files and any(f.startswith("worker-") for f in files)
    task = p2p_json("list", "tasks", "--home", peer0.home, "-f", "name=obs_map", "-f",
                    f"node_id={peer0.peer_id}")[0]
    found = p2p_json("logs", "--home", peer0.home, "--task", task["task_id"])
    assert [f["file"] for f in found] == [f"worker-{task['worker_id']}.log"]


GET_ENDPOINTS = ["/", "/api/version", "/api/cluster", "/api/nodes", "/api/jobs", "/api/actors", "/api/tasks",
                 "/api/objects", "/api/logs", "/api/logs/peer.log", "/api/timeline", "/metrics",
                 "/api/jobs/job-x", "/api/jobs/job-x/logs"]
POST_ENDPOINTS = ["/api/jobs", "/api/jobs/job-x/stop", "/api/packages/" + "0" * 64]


def test_every_endpoint_refuses_wrong_or_missing_credentials(obs):
    url, token = obs["urls"][0], obs["token"]
    for path in GET_ENDPOINTS + POST_ENDPOINTS:
        method = "POST" if path in POST_ENDPOINTS else "GET"
        body = b"{}" if method == "POST" else None
        assert http(url + path, method=method, body=body, token="not-the-token")[0] == 401, path
        assert http(url + path, method=method, body=body, cookie="p2p_session=forged")[0] == 401, path
    for path in POST_ENDPOINTS:  # writes need the token even from the peer's own machine
        assert http(url + path, method="POST", body=b"{}")[0] == 401, path
        # and these peers run without --enable-jobs: read-only, even with the token
        status, body, _ = http(url + path, method="POST", body=b"{}", token=token)
        assert status == 403 and b"--enable-jobs" in body, path
    # a loopback read naming another host is a DNS-rebinding attempt
    assert http(url + "/api/nodes", headers={"Host": "evil.example:8265"})[0] == 403
    # logging in takes the token and gives a session that works; a wrong token gives nothing
    assert http(url + "/api/login", method="POST", body=json.dumps({"token": "nope"}).encode())[0] == 401
    status, _, headers = http(url + "/api/login", method="POST", body=json.dumps({"token": token}).encode())
    assert status == 200 and "HttpOnly" in headers["Set-Cookie"] and "SameSite=Strict" in headers["Set-Cookie"]
    session = headers["Set-Cookie"].split(";")[0]
    assert http(url + "/api/nodes", cookie=session)[0] == 200


def test_requests_from_another_address_need_the_token(obs):
    ip = non_loopback_ipv4()
    if ip is None:
        pytest.skip("this machine has no non-loopback IPv4 address to send from")
    url, token = f"http://{ip}:{dashboard_port(obs['cluster'].peers[0])}", obs["token"]
    for path in GET_ENDPOINTS + POST_ENDPOINTS:
        method = "POST" if path in POST_ENDPOINTS else "GET"
        body = b"{}" if method == "POST" else None
        assert http(url + path, method=method, body=body)[0] == 401, path
        assert http(url + path, method=method, body=body, token="wrong")[0] == 401, path
    for path in GET_ENDPOINTS[:-2]:
        assert http(url + path, token=token)[0] == 200, path
    # the other peers' dashboards listen on loopback only: not reachable from there at all
    with pytest.raises(OSError):
        http(f"http://{ip}:{dashboard_port(obs['cluster'].peers[1])}/api/nodes", timeout_s=5)


def _browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install '.[browser]')")
    binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver_path = shutil.which("chromedriver")
    if binary is None or driver_path is None:
        pytest.skip("no Chromium with chromedriver installed (apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1100"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(driver_path), options=opts)


def _rows(browser) -> dict:
    from selenium.webdriver.common.by import By
    try:
        return {r.get_attribute("data-peer"): r.get_attribute("data-state")
                for r in browser.find_elements(By.CSS_SELECTOR, "#peers tbody tr")}
    except Exception:  # noqa: BLE001 - the table is redrawn under us
        return {}


def test_browser_shows_the_peers_and_sees_one_die(obs):
    from selenium.webdriver.common.by import By
    browser = _browser()
    try:
        peers = obs["peers"]
        ip = non_loopback_ipv4()
        if ip is not None:  # from another address the page asks for the token, then shows the cluster
            browser.get(f"http://{ip}:{dashboard_port(obs['cluster'].peers[0])}/")
            wait_for(lambda: browser.find_element(By.ID, "login").is_displayed(), 20, "the login box")
            assert _rows(browser) == {}
            browser.find_element(By.ID, "token").send_keys(obs["token"])
            browser.find_element(By.CSS_SELECTOR, "#login button").click()
            wait_for(lambda: sorted(_rows(browser)) == peers, 20, "3 peers after logging in")
        browser.get(obs["urls"][0] + "/")
        wait_for(lambda: _rows(browser) == {p: "alive" for p in peers}, 30, "3 alive peers on the page")
        wait_for(lambda: "obs_map" in browser.find_element(By.ID, "tasknames").text, 20, "task counts")
        assert "FINISHED: 12" in browser.find_element(By.ID, "tasknames").text
        if os.environ.get("P2P_SCREENSHOT"):
            browser.save_screenshot(os.environ["P2P_SCREENSHOT"])
        victim = obs["cluster"].peers[2]
        dead = victim.peer_id
        os.kill(victim.pid, signal.SIGKILL)
        wait_for(lambda: _rows(browser).get(dead) == "dead", 40, "the killed peer shown dead")
        assert all(state == "alive" for p, state in _rows(browser).items() if p != dead)
        assert "2 of 3 peers alive" in browser.find_element(By.ID, "summary").text
    finally:
        browser.quit()
