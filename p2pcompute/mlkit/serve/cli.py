"""`p2p serve status | deploy CONFIG.yaml | shutdown`, wired into the `p2p` command by `add_parser`."""

from __future__ import annotations

import json
import os


def add_parser(subparsers) -> None:
    serve = subparsers.add_parser("serve", help="model serving: status, deploy a config file, shut down")
    serve.add_argument("action", choices=["status", "deploy", "shutdown"])
    serve.add_argument("config", nargs="?", help="the YAML/JSON config file (for deploy)")
    serve.add_argument("--home", default=None, help="the local peer's home (default ~/.p2pcompute or $P2P_HOME)")
    serve.add_argument("--address", default=None, help="a peer's HOST:PORT instead of this machine's peer")
    serve.add_argument("--token-file", default=None, help="the cluster token, with --address")
    serve.add_argument("--json", action="store_true", help="status as JSON")
    serve.set_defaults(func=cmd_serve)


def _connect(args) -> None:
    import p2pcompute as p2p
    if p2p.is_initialized():
        return   # called from a driver that is already attached
    if args.home:
        os.environ["P2P_HOME"] = args.home
    if args.address:
        token = open(args.token_file).read().strip() if args.token_file else None
        p2p.init(address=args.address, token=token)
    else:
        p2p.init(address="auto")


def cmd_serve(args) -> int:
    import sys

    from p2pcompute.errors import P2PError
    if args.action == "deploy" and not args.config:
        print("p2p serve deploy: give the config file: p2p serve deploy CONFIG.yaml", file=sys.stderr)
        return 2
    try:
        return _serve(args)
    except (ValueError, TypeError, ImportError, OSError, TimeoutError, P2PError) as exc:
        print(f"p2p serve {args.action}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def _serve(args) -> int:
    from p2pcompute.mlkit import serve
    _connect(args)
    if args.action == "deploy":
        for name in serve.config_file.deploy(args.config):
            print(f"application {name!r} is running")
        for node, url in sorted(serve.proxy_urls().items()):
            print(f"  HTTP on peer {node}: {url}")
        return 0
    if args.action == "shutdown":
        serve.shutdown()
        print("serve shut down: applications deleted, agents stopped")
        return 0
    st = serve.status()
    if args.json:
        print(json.dumps(st.to_dict(), indent=2, default=str))
        return 0
    if not st.proxies and not st.applications:
        print("serve is not running")
        return 0
    for node, rec in sorted(st.proxies.items()):
        where = f"http://{rec['host']}:{rec['port']}" if rec.get("port") else f"no HTTP ({rec.get('error')})"
        print(f"agent on peer {node}: {where}")
    for name, app in sorted(st.applications.items()):
        print(f"app {name}  {app.status}  route {app.route_prefix}")
        for dep, d in sorted(app.deployments.items()):
            counts = ", ".join(f"{k} {v}" for k, v in sorted(d.replicas.items())) or "no replicas"
            print(f"  {dep}: {d.status}, target {d.target}, {counts}" + (f" — {d.message}" if d.message else ""))
        if app.message:
            print(f"  {app.message}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m p2pcompute.mlkit.serve.cli status|deploy|shutdown ...` (the same as `p2p serve ...`)."""
    import argparse
    parser = argparse.ArgumentParser(prog="p2p")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", *(argv if argv is not None else __import__("sys").argv[1:])])
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
