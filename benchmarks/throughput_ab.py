"""Async task throughput of two installs of p2pcompute, side by side: rounds alternate between them.

Each install must be its own environment, installed without -e (an editable install wins over PYTHONPATH,
so pointing PYTHONPATH at another checkout measures the same code twice):

    python3 -m venv /tmp/a && /tmp/a/bin/pip install <checkout A>
    python3 -m venv /tmp/b && /tmp/b/bin/pip install <checkout B>
    python benchmarks/throughput_ab.py /tmp/a/bin/python /tmp/b/bin/python --rounds 5

Each round starts a fresh driver (`init(num_cpus=2)`) that gets 10,000 `noop.remote()` refs three times and
reports its best; the medians over the rounds and their ratio (B / A) are printed.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

PROBE = """
import time
import p2pcompute as p2p
p2p.init(num_cpus=2)
@p2p.remote
def noop():
    return None
p2p.get([noop.remote() for _ in range(500)])
best = 0.0
for _ in range(3):
    t = time.perf_counter()
    p2p.get([noop.remote() for _ in range(10_000)])
    best = max(best, 10_000 / (time.perf_counter() - t))
print(best)
p2p.shutdown()
"""


def one_round(python: str) -> float:
    out = subprocess.run([python, "-c", PROBE], capture_output=True, text=True, timeout=300, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("python_a", help="the interpreter of install A")
    parser.add_argument("python_b", help="the interpreter of install B")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    a, b = [], []
    for i in range(args.rounds):
        a.append(one_round(args.python_a))
        b.append(one_round(args.python_b))
        print(f"round {i + 1}: A {a[-1]:,.0f}/s  B {b[-1]:,.0f}/s", flush=True)
    ma, mb = statistics.median(a), statistics.median(b)
    print(f"median A {ma:,.0f}/s  B {mb:,.0f}/s  B/A {mb / ma:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
