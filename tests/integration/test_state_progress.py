"""`p2pcompute.util.progress(refs)`: the values of `get`, in order, with a bar drawn only on a terminal."""

from __future__ import annotations

import io
import os

import pytest

import p2pcompute as p2p
from p2pcompute.errors import GetTimeoutError, InvalidArgumentError
from p2pcompute.util import progress
from p2pcompute.util.progress import render

pytestmark = pytest.mark.integration


@p2p.remote
def pr_slow(i, gate):
    import time
    while gate and not os.path.exists(gate):
        time.sleep(0.01)  # held until the test opens the gate
    return i * 2


def test_render_shows_count_share_and_time_left():
    assert render(0, 4, 0.0, "x") == "x [" + "." * 30 + "] 0/4   0% 0.0s"
    line = render(1, 4, 2.0)
    assert line.startswith("[" + "#" * 8 + "." * 22 + "] 1/4  25% 2.0s") and "(~6s left)" in line
    assert render(4, 4, 3.0).endswith("4/4 100% 3.0s")


def test_progress_returns_values_in_order_and_draws_on_request(cluster):
    refs = [pr_slow.remote(i, None) for i in range(8)]
    buf = io.StringIO()
    assert progress(refs, desc="work", file=buf, force=True) == [i * 2 for i in range(8)]
    assert buf.getvalue().rstrip("\n").split("\r")[-1].startswith("work [" + "#" * 30 + "] 8/8 100%")
    quiet = io.StringIO()  # not a terminal: no bar
    assert progress(refs[0], file=quiet) == 0 and quiet.getvalue() == ""
    assert progress(refs + refs[:1], file=quiet) == [i * 2 for i in range(8)] + [0]


def test_progress_times_out_and_checks_its_input(cluster, tmp_path):
    gate = str(tmp_path / "gate")
    ref = pr_slow.remote(1, gate)
    with pytest.raises(GetTimeoutError, match="1 of 1"):
        progress([ref], timeout=0.3, file=io.StringIO())
    open(gate, "w").close()
    assert progress([ref], file=io.StringIO()) == [2]
    with pytest.raises(InvalidArgumentError):
        progress([1, 2])
