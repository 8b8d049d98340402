"""`runtime_env={"pip": [...]}`: one virtual environment per requirement set and peer, built once.

The environment is created with `--system-site-packages` (so p2pcompute and what the peer has installed
stay importable), its requirements installed with pip from whatever index the machine reaches, and the
result renamed into `<cache>/pip-<sha256 of the sorted requirements>` only when the install succeeded: a
failed build leaves nothing behind and fails the task with pip's own output. Workers then put the
environment's site-packages first on `sys.path`.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile

from p2pcompute.errors import InvalidArgumentError

PIP_TIMEOUT_S = 600


def normalize(pip) -> dict:
    if isinstance(pip, (list, tuple)):
        pip = {"packages": list(pip)}
    if not isinstance(pip, dict) or not isinstance(pip.get("packages"), list) or \
            not all(isinstance(p, str) and p.strip() for p in pip["packages"]):
        raise InvalidArgumentError("runtime_env pip must be a list of requirement strings, e.g. ['six==1.16.0'], "
                                   "or {'packages': [...]}")
    for p in pip["packages"]:
        if p.lstrip().startswith("-"):
            raise InvalidArgumentError(f"runtime_env pip takes requirements, not pip options ({p!r})")
    return {"packages": sorted(p.strip() for p in pip["packages"])}


def env_hash(pip: dict) -> str:
    return hashlib.sha256("\n".join(pip["packages"]).encode()).hexdigest()


def _site_packages(venv: str) -> str:
    found = glob.glob(os.path.join(venv, "lib", "python*", "site-packages"))
    if not found:
        raise RuntimeError(f"no site-packages in {venv}")
    return found[0]


def ensure(pip: dict, cache_root: str) -> str:
    from p2pcompute.runtime_env import RuntimeEnvSetupError
    dest = os.path.join(cache_root, f"pip-{env_hash(pip)}")
    if os.path.isdir(dest):
        return _site_packages(dest)
    os.makedirs(cache_root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".pip-", dir=cache_root)
    try:
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", tmp], check=True,
                       capture_output=True, timeout=120)
        # pip of the worker's own interpreter installs into the new environment's prefix.
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--quiet",
                               "--prefix", tmp, "--no-warn-script-location", *pip["packages"]],
                              capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        if proc.returncode != 0:
            raise RuntimeEnvSetupError(f"pip install {' '.join(pip['packages'])} failed:\n{proc.stderr[-4000:]}")
        try:
            os.rename(tmp, dest)
        except OSError:
            if not os.path.isdir(dest):
                raise
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return _site_packages(dest)
