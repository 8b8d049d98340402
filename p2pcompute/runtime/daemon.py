"""Entry point of a peer process: `python -m p2pcompute.runtime.daemon`.

Two modes. Embedded (`--session-dir`): a private peer for one driver, IPC only, gone with the driver.
Cluster (`--home`): a long-lived peer reachable over TCP with CURVE, started by `p2p start` / `p2p join`;
it writes HOME/peer.json once it is ready and removes it when it stops.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import sys
import time

from p2pcompute.ids import new_peer_id
from p2pcompute.lease import resources
from p2pcompute.ownership.store import create_store_dir
from p2pcompute.runtime.home import Home


def _parse(argv):
    parser = argparse.ArgumentParser(prog="p2pcompute-peer")
    parser.add_argument("--peer-id", default=None)
    parser.add_argument("--session-dir", default=None, help="embedded mode: the driver's session directory")
    parser.add_argument("--store-dir", default=None)
    parser.add_argument("--home", default=None, help="cluster mode: the peer's home directory")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--advertise-host", default=None)
    parser.add_argument("--join", nargs="*", default=[])
    parser.add_argument("--resources", default="{}", help="JSON dict of resource units (fixed point)")
    parser.add_argument("--parent-pid", type=int, default=0)
    parser.add_argument("--prestart", type=int, default=None)
    parser.add_argument("--store-capacity", type=int, default=None, help="bytes of shared memory for objects")
    parser.add_argument("--dashboard-port", type=int, default=8265)
    parser.add_argument("--dashboard-host", default="127.0.0.1")
    parser.add_argument("--no-dashboard", action="store_true")
    parser.add_argument("--enable-jobs", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    from p2pcompute.runtime.peer import PeerDaemon
    total = {k: int(v) for k, v in json.loads(args.resources).items()}
    peer_id = args.peer_id or new_peer_id()
    own = logging.getLogger("p2pcompute")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s peer {peer_id} %(levelname)s %(name)s: %(message)s"))
    own.addHandler(handler)
    own.setLevel(os.environ.get("P2P_LOG_LEVEL", "INFO" if args.home else "WARNING"))
    own.propagate = False
    if args.home is None:
        daemon = PeerDaemon(peer_id=peer_id, session_dir=args.session_dir, store_dir=args.store_dir, total=total,
                            parent_pid=args.parent_pid, prestart=args.prestart, store_capacity=args.store_capacity)
        state = None
        home = None
    else:
        home = Home(args.home)
        home.create()
        stale = home.read_state()
        if stale and home.running() is None:
            # The last peer of this home died without cleaning up (kill -9, power loss): its store goes now.
            old = stale.get("store_dir")
            if isinstance(old, str) and os.path.basename(old).startswith("p2p-"):
                shutil.rmtree(old, ignore_errors=True)
            home.clear_state()
        token = os.environ.pop("P2P_CLUSTER_TOKEN", None) or home.read_token()
        if not token:
            print("no cluster token: pass --token/--token-file to p2p start or p2p join", file=sys.stderr)
            return 2
        store_dir = create_store_dir(f"p2p-{peer_id}", spill_dir=os.path.join(home.path, "spill", peer_id))
        daemon = PeerDaemon(peer_id=peer_id, session_dir=home.run_dir, store_dir=store_dir, total=total,
                            tcp_host=args.host, tcp_port=args.port, advertise_host=args.advertise_host,
                            token=token, seeds=list(args.join), prestart=args.prestart, log_dir=home.log_dir,
                            store_capacity=args.store_capacity)
        dashboard_url = None
        if not args.no_dashboard:
            from p2pcompute.dashboard.server import start_for_peer
            try:
                dashboard_url = start_for_peer(daemon, token=token, host=args.dashboard_host,
                                               port=args.dashboard_port, home=home.path,
                                               jobs=args.enable_jobs).url
            except OSError as exc:
                logging.getLogger("p2pcompute.peer").warning("no dashboard: %s", exc)
        state = {"peer_id": peer_id, "pid": os.getpid(), "address": daemon.addr, "dashboard": dashboard_url,
                 "tcp": daemon.transport.tcp_endpoint, "bind_host": args.host,
                 "advertise_host": args.advertise_host, "run_dir": home.run_dir, "store_dir": store_dir,
                 "log_dir": home.log_dir, "started": time.time(), "resources": resources.to_user(total)}
        home.write_state(state)
    signal.signal(signal.SIGTERM, lambda *_: daemon.leave())
    signal.signal(signal.SIGINT, lambda *_: daemon.leave())
    try:
        daemon.serve()
    finally:
        if home is not None:
            current = home.read_state()
            if current and current.get("pid") == os.getpid():
                home.clear_state()
    return 0


if __name__ == "__main__":
    sys.exit(main())
