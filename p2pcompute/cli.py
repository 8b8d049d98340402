"""The `p2p` command (also `python -m p2pcompute`)."""

from __future__ import annotations

import argparse
import sys


def _demo(args) -> int:
    from p2pcompute import demo
    return demo.run(num_cpus=args.num_cpus)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="p2p", description="p2pcompute: Ray-style tasks and actors with no head node")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser("demo", help="run the classic examples on an embedded local peer, with timings")
    demo.add_argument("--num-cpus", type=int, default=None, help="CPUs for the embedded peer (default: all)")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
