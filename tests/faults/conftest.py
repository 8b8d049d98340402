"""The fault-injection tests reuse the integration suite's `cluster_util` (real peers through the `p2p` CLI).

Test directories have no `__init__.py`: helpers are imported by bare name, from the test file's directory,
which pytest puts on `sys.path`. `cluster_util` lives in `tests/integration`, so that directory is added too.
"""

from __future__ import annotations

import os
import sys

_INTEGRATION_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "integration")
if os.path.abspath(_INTEGRATION_DIR) not in map(os.path.abspath, sys.path):
    sys.path.append(os.path.abspath(_INTEGRATION_DIR))
