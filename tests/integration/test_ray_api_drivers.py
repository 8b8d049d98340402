"""Ray behaviour that needs drivers of their own: auto-init (and turning it off), `init()` options Ray code
passes, and a second driver joining a running embedded instance through the address `init()` returned, with
named actors kept apart by namespace."""

from __future__ import annotations

import pytest

from itest_util import run_driver

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


def test_auto_init_starts_the_embedded_default_and_can_be_turned_off(tmp_path):
    proc = run_driver("""
        import os
        import p2pcompute as p2p
        from p2pcompute import errors

        @p2p.remote
        def square(x):
            return x * x

        assert not p2p.is_initialized()
        ref = square.remote(7)              # no init(): starts the embedded default, as Ray does
        assert p2p.is_initialized()
        print("value", p2p.get(ref, timeout=60), "put", p2p.get(p2p.put("x")))
        p2p.shutdown()

        os.environ["P2P_AUTO_INIT"] = "0"
        for call in (lambda: square.remote(1), lambda: p2p.put(1)):
            try:
                call()
            except errors.NotInitializedError as exc:
                print("off:", "P2P_AUTO_INIT" in str(exc))
        assert not p2p.is_initialized()
    """, tmp_path, timeout_s=80)
    assert "value 49 put x" in proc.stdout
    assert proc.stdout.count("off: True") == 2


def test_second_driver_joins_by_address_and_namespaces_separate_names(tmp_path):
    (tmp_path / "joiner.py").write_text("""
import sys
import p2pcompute as p2p
from p2pcompute import errors

address, namespace = sys.argv[1], sys.argv[2]
info = p2p.init(address=address, namespace=namespace)
print("joined", info["node_id"])
print("names", sorted(p2p.util.list_named_actors()))
try:
    registry = p2p.get_actor("registry")
    print("found", p2p.get(registry.add.remote("from-" + namespace), timeout=60))
except errors.InvalidArgumentError:
    print("no registry in", namespace)
p2p.shutdown()
""")
    proc = run_driver("""
        import subprocess, sys
        import p2pcompute as p2p

        info = p2p.init(num_cpus=1, object_store_memory=7e8, namespace="alpha")   # a float, as Ray accepts

        @p2p.remote
        class Registry:
            def __init__(self):
                self.items = []
            def add(self, item):
                self.items.append(item)
                return list(self.items)

        registry = Registry.options(name="registry").remote()
        assert p2p.get(registry.add.remote("first"), timeout=60) == ["first"]
        for ns in ("alpha", "beta"):
            out = subprocess.run([sys.executable, "joiner.py", info["address"], ns], capture_output=True,
                                 text=True, timeout=60)
            print(out.stdout, out.stderr[-2000:])
        print("after", p2p.get(registry.add.remote("last"), timeout=60))
    """, tmp_path, timeout_s=85)
    out = proc.stdout
    assert out.count("joined") == 2, out
    assert "names ['registry']" in out and "names []" in out, out
    assert "found ['first', 'from-alpha']" in out, out
    assert "no registry in beta" in out, out
    assert "after ['first', 'from-alpha', 'last']" in out, out
