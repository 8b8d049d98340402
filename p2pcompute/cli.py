"""The `p2p` command (also `python -m p2pcompute`): start, join, status, stop, table recover, demo."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time

from p2pcompute.config import DEFAULT_PORT
from p2pcompute.errors import InvalidArgumentError, P2PError, PeerUnavailableError


class CommandError(Exception):
    """A command failed in a way the user can fix; the message says how."""


# ---- start / join ---------------------------------------------------------------------------------------

def _advertise(host: str, advertise: str | None) -> str:
    if advertise:
        return advertise
    if host not in ("0.0.0.0", "::", ""):
        return host
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def _resources(args) -> dict:
    from p2pcompute.lease import resources
    custom = {}
    if args.resources:
        try:
            custom = json.loads(args.resources)
        except ValueError as exc:
            raise CommandError(f"--resources must be a JSON object like '{{\"tpu\": 2}}': {exc}") from None
        if not isinstance(custom, dict):
            raise CommandError("--resources must be a JSON object like '{\"tpu\": 2}'")
    cpus = args.num_cpus if args.num_cpus is not None else (os.cpu_count() or 1)
    try:
        import psutil
        memory = float(psutil.virtual_memory().total)
    except Exception:
        memory = 0.0
    try:
        shape = resources.make_shape(cpus, args.num_gpus or 0, memory, custom)
    except InvalidArgumentError as exc:
        raise CommandError(str(exc)) from None
    shape.setdefault(resources.CPU, 0)
    return shape


def _launch(args, seeds: list[str], token: str) -> dict:
    from p2pcompute.runtime.home import Home
    home = Home(args.home)
    try:
        home.create()
    except InvalidArgumentError as exc:
        raise CommandError(str(exc)) from None
    running = home.running()
    if running:
        raise CommandError(f"a peer is already running from {home.path} (pid {running['pid']}, "
                           f"{running['tcp']}); stop it with `p2p stop --home {home.path}` first")
    home.clear_state()
    home.save_token(token)
    shape = _resources(args)
    cmd = [sys.executable, "-m", "p2pcompute.runtime.daemon", "--home", home.path, "--host", args.host,
           "--port", str(args.port), "--advertise-host", _advertise(args.host, args.advertise_host),
           "--resources", json.dumps(shape)]
    if seeds:
        cmd += ["--join", *seeds]
    if getattr(args, "prestart", None) is not None:
        cmd += ["--prestart", str(args.prestart)]
    if getattr(args, "object_store_memory", None):
        cmd += ["--store-capacity", str(args.object_store_memory)]
    if getattr(args, "no_dashboard", False):
        cmd += ["--no-dashboard"]
    else:
        cmd += ["--dashboard-host", args.dashboard_host, "--dashboard-port", str(args.dashboard_port)]
        if getattr(args, "enable_jobs", False):
            cmd += ["--enable-jobs"]
    env = dict(os.environ, P2P_CLUSTER_TOKEN=token)
    from p2pcompute import config
    if getattr(args, "config", None):
        env[config.FILE_ENV] = os.path.abspath(args.config)
    try:
        config.system_config(env)  # a bad key or value is reported here, not in the peer's log
    except InvalidArgumentError as exc:
        raise CommandError(str(exc)) from None
    env["PYTHONPATH"] = os.pathsep.join([config.package_root()] +
                                        [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    log_path = os.path.join(home.log_dir, "peer.log")
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env,
                                start_new_session=True, close_fds=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = home.read_state()
        if state and state.get("pid") == proc.pid:
            return state
        if proc.poll() is not None:
            raise CommandError(f"the peer failed to start (exit code {proc.returncode}):\n{_tail(log_path)}")
        time.sleep(0.02)  # waiting for another process to write its state file; bounded by the deadline
    proc.kill()
    raise CommandError(f"the peer did not start within 30 s; see {log_path}")


def _tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def _token(args, required: bool) -> str:
    from p2pcompute.runtime.home import new_token, read_token_arg
    try:
        token = read_token_arg(args.token, args.token_file) or os.environ.get("P2P_TOKEN") or None
    except InvalidArgumentError as exc:
        raise CommandError(str(exc)) from None
    if token is None:
        if required:
            raise CommandError("joining needs the cluster token: --token-file FILE (the first peer's "
                               "HOME/token), --token TOKEN, or the P2P_TOKEN environment variable")
        token = new_token()
    return token


def cmd_start(args) -> int:
    token = _token(args, required=False)
    state = _launch(args, [], token)
    host_port = state["tcp"][len("tcp://"):]
    print(f"Started peer {state['peer_id']} at {host_port} (home {os.path.dirname(state['run_dir'])}, "
          f"pid {state['pid']}).")
    print("To join from another machine, run:")
    print(f"    p2p join {host_port} --token {token}")
    print(f"or copy {os.path.join(os.path.dirname(state['run_dir']), 'token')} there and run "
          f"`p2p join {host_port} --token-file FILE` (keeps the token out of the process list).")
    print("Drivers on this machine: p2pcompute.init(address=\"auto\")")
    if state.get("dashboard"):
        print(f"Dashboard: {state['dashboard']}")
    return 0


def cmd_join(args) -> int:
    seeds = []
    for addr in args.addresses:
        host, sep, port = addr.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise CommandError(f"{addr!r} is not HOST:PORT")
        seeds.append(f"tcp://{host}:{port}")
    token = _token(args, required=True)
    state = _launch(args, seeds, token)
    print(f"Peer {state['peer_id']} at {state['tcp'][len('tcp://'):]} is joining through "
          f"{', '.join(args.addresses)}; `p2p status` shows the cluster.")
    return 0


# ---- status / stop ----------------------------------------------------------------------------------------

def _request(home_path: str | None, make, timeout_s: float = 10.0):
    from p2pcompute.net import codec
    from p2pcompute.net.transport import Context, Transport
    from p2pcompute.runtime.home import Home
    home = Home(home_path)
    try:
        state = home.require_running()
    except PeerUnavailableError as exc:
        raise CommandError(str(exc)) from None
    ctx = Context()
    path = os.path.join(state["run_dir"], f"cli{os.getpid()}")
    transport = Transport(ctx, f"cli{os.getpid()}", "c", ipc_path=path)
    try:
        transport.send(state["address"], codec.encode(make(transport.address)))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            frames, _, _ = transport.poll(100)
            for _sender, data in frames:
                return state, codec.decode(data)
        raise CommandError(f"the peer (pid {state['pid']}) did not answer within {timeout_s} s")
    finally:
        transport.close()
        ctx.close()
        try:
            os.unlink(path)
        except OSError:
            pass


def _fmt_resources(res: dict, keys=("CPU", "GPU")) -> str:
    parts = []
    for k in keys:
        if k in res:
            parts.append(f"{res[k]:g}")
    return "/".join(parts) if parts else "-"


def _fmt_bytes(n) -> str:
    n = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _fmt_store(node: dict) -> str:
    text = _fmt_bytes(node.get("StoreUsed", 0))
    if node.get("StoreCapacity"):
        text += f"/{_fmt_bytes(node['StoreCapacity'])}"
    if node.get("Spilled"):
        text += f" +{_fmt_bytes(node['Spilled'])} spilled"
    return text


def cmd_status(args) -> int:
    from p2pcompute.runtime import messages as rm
    state, reply = _request(args.home, lambda addr: rm.PeerStatusRequest(addr, "status"))
    status = reply.status
    if args.json:
        print(json.dumps(status, indent=2, default=str))
        return 0
    nodes = status["nodes"]
    print(f"peer {status['peer_id']} (pid {status['pid']}, up {status['uptime_s']:.0f} s) knows "
          f"{len(nodes)} peer(s):")
    if status.get("dashboard"):
        print(f"dashboard: {status['dashboard']}")
    header = ["PEER", "ADDRESS", "STATE", "CPU total/avail", "OTHER", "QUEUED", "STORE", "HEARD"]
    rows = []
    for n in nodes:
        tcp = next((p for p in str(n["Address"]).split() if p.startswith("tcp://")), n["Address"])
        total, avail = n.get("Resources", {}), n.get("Available", {})
        other = ", ".join(f"{k}={v:g}/{avail.get(k, 0):g}" for k, v in sorted(total.items())
                          if k not in ("CPU", "memory"))
        heard = n.get("LastHeardS")
        me = n["NodeID"] == status["peer_id"]
        rows.append([n["NodeID"] + (" *" if me else ""), tcp.replace("tcp://", ""), n.get("State", "?"),
                     f"{total.get('CPU', 0):g}/{avail.get('CPU', 0):g}", other or "-", str(n.get("Queued", 0)),
                     _fmt_store(n), "now" if me else (f"{heard:.1f} s ago" if heard is not None
                                                                          else "-")])
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    for r in [header] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    jobs = status.get("jobs") or []
    if jobs:
        running = [j for j in jobs if j.get("state") == "RUNNING"]
        print(f"jobs: {len(running)} running, {len(jobs)} in all (`p2p jobs` lists them)")
    table = status.get("table") or {}
    if table:
        print(f"table: {len(table.get('replicas', []))} replica(s) {', '.join(table.get('replicas', []))}; "
              f"leader {table.get('leader') or 'unknown'}; this peer is {table.get('role')}")
    pending = [d for n in nodes for d in n.get("PendingDemand", [])]
    if pending:
        print(f"pending demand: {len(pending)} request(s), e.g. {pending[0]['shape']}"
              + (" (fits no peer)" if pending[0].get("infeasible") else ""))
    return 0


def cmd_jobs(args) -> int:
    from p2pcompute.runtime import messages as rm
    _state, reply = _request(args.home, lambda addr: rm.TableOp("jobs", ("job_list",), True, addr))
    if not reply.ok:
        raise CommandError(f"the table did not answer: {reply.error}")
    jobs = [record for _job_id, record in reply.result]
    if args.json:
        print(json.dumps(jobs, indent=2, default=str))
        return 0
    if not jobs:
        print("no jobs")
        return 0
    rows = [["JOB", "STATE", "PEER", "STARTED", "ENTRY"]]
    for job in sorted(jobs, key=lambda j: j.get("start_time", 0)):
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.get("start_time", 0)))
        rows.append([job.get("job_id", "?"), job.get("state", "?"), job.get("peer", "?"), started,
                     str(job.get("entry", ""))])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


def cmd_memory(args) -> int:
    from p2pcompute.internal import format_report
    from p2pcompute.runtime import messages as rm
    _state, reply = _request(args.home, lambda addr: rm.MemoryRequest("memory", addr, True), timeout_s=15)
    if args.json:
        print(json.dumps(reply.peers, indent=2, default=str))
    else:
        print(format_report(reply.peers))
    return 0


def cmd_stop(args) -> int:
    from p2pcompute.runtime import messages as rm
    from p2pcompute.runtime.home import Home
    state, _reply = _request(args.home, lambda addr: rm.StopPeer(addr, "stop"))
    pid = state["pid"]
    deadline = time.monotonic() + 15
    home = Home(args.home)
    while time.monotonic() < deadline:
        if home.running() is None:
            print(f"peer {state['peer_id']} left the cluster and stopped")
            return 0
        time.sleep(0.05)  # waiting for the peer process to exit; bounded by the deadline
    os.kill(pid, 9)
    raise CommandError(f"peer {state['peer_id']} did not stop within 15 s; killed pid {pid}")


def cmd_table(args) -> int:
    """`p2p table recover`: re-form the replicated table after a majority of its replicas died for good."""
    from p2pcompute.runtime import messages as rm
    _state, reply = _request(args.home, lambda addr: rm.TableOp("recover", ("recover",), False, addr),
                             timeout_s=20)
    if not reply.ok:
        raise CommandError(str(reply.error))
    outcome = reply.result
    if args.json:
        print(json.dumps(outcome, indent=2))
        return 0
    print(f"table recovered: {outcome['leader']} leads replicas {', '.join(outcome['replicas'])}; "
          f"lost replicas: {', '.join(outcome['lost'])}")
    print(outcome["note"])
    return 0


def cmd_demo(args) -> int:
    from p2pcompute import demo
    if args.peers and args.peers > 1:
        return demo.run_cluster(args.peers, num_cpus=args.num_cpus)
    return demo.run(num_cpus=args.num_cpus)


# ---- parser -----------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="p2p", description="p2pcompute: Ray-style tasks and actors with no "
                                                             "head node")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def peer_options(p):
        p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT})")
        p.add_argument("--host", default="0.0.0.0", help="interface to listen on (default: all)")
        p.add_argument("--advertise-host", default=None, help="address other machines use to reach this one")
        p.add_argument("--num-cpus", type=float, default=None, help="CPUs to offer (default: all)")
        p.add_argument("--num-gpus", type=float, default=None)
        p.add_argument("--resources", default=None, help="custom resources as JSON, e.g. '{\"tpu\": 2}'")
        p.add_argument("--object-store-memory", type=int, default=None,
                       help="bytes of shared memory for objects (default 30%% of RAM); beyond it objects spill "
                            "to HOME/spill")
        p.add_argument("--prestart", type=int, default=None,
                       help="workers to start at once, before any task asks (default: one per CPU)")
        p.add_argument("--home", default=None, help="state directory (default ~/.p2pcompute or $P2P_HOME)")
        p.add_argument("--token", default=None, help="cluster token (visible in process lists; prefer a file)")
        p.add_argument("--token-file", default=None, help="file holding the cluster token")
        p.add_argument("--config", default=None, metavar="FILE",
                       help="system config (JSON, or YAML with pyyaml): protocol settings by section, e.g. "
                            "'{\"membership\": {\"probe_interval_ms\": 250}}'; see docs/operations.md")
        p.add_argument("--dashboard-port", type=int, default=8265,
                       help="dashboard port (default 8265, or the next free one)")
        p.add_argument("--dashboard-host", default="127.0.0.1",
                       help="interface the dashboard listens on (default 127.0.0.1; others need the token)")
        p.add_argument("--no-dashboard", action="store_true", help="serve no dashboard (nor job submission)")
        p.add_argument("--enable-jobs", action="store_true",
                       help="accept job submissions (p2p job submit) on the dashboard; they need the token")

    start = sub.add_parser("start", help="start the first peer of a cluster; prints the join command")
    peer_options(start)
    start.set_defaults(func=cmd_start)
    join = sub.add_parser("join", help="start a peer that joins the cluster of any live member")
    join.add_argument("addresses", nargs="+", metavar="HOST:PORT")
    peer_options(join)
    join.set_defaults(func=cmd_join)
    status = sub.add_parser("status", help="list every peer the local peer knows")
    status.add_argument("--home", default=None)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_status)
    memory = sub.add_parser("memory", help="objects held on every peer, their owners and who references them")
    memory.add_argument("--home", default=None)
    memory.add_argument("--json", action="store_true")
    memory.set_defaults(func=cmd_memory)
    jobs = sub.add_parser("jobs", help="list the cluster's jobs (one per driver)")
    jobs.add_argument("--home", default=None)
    jobs.add_argument("--json", action="store_true")
    jobs.set_defaults(func=cmd_jobs)
    stop = sub.add_parser("stop", help="leave the cluster gracefully and stop the local peer")
    stop.add_argument("--home", default=None)
    stop.set_defaults(func=cmd_stop)
    table = sub.add_parser("table", help="operate the replicated metadata table")
    table.add_argument("action", choices=["recover"],
                       help="recover: after a majority of the table's replicas died for good, re-form it from "
                            "the most advanced surviving replica (run on any surviving peer)")
    table.add_argument("--home", default=None)
    table.add_argument("--json", action="store_true")
    table.set_defaults(func=cmd_table)
    demo = sub.add_parser("demo", help="run the classic examples with timings")
    demo.add_argument("--num-cpus", type=int, default=None, help="CPUs per peer (default: all)")
    demo.add_argument("--peers", type=int, default=1, help="run on this many local peers (default 1)")
    demo.set_defaults(func=cmd_demo)
    from p2pcompute.dashboard import commands as observe_commands
    from p2pcompute.jobs import cli as job_commands
    from p2pcompute.mlkit.serve import cli as serve_commands
    observe_commands.add_parsers(sub)
    job_commands.add_parsers(sub)
    serve_commands.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except CommandError as exc:
        print(f"p2p {args.command}: {exc}", file=sys.stderr)
        return 1
    except P2PError as exc:
        print(f"p2p {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
