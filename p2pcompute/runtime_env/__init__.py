"""Runtime environments: the code and settings a job's workers need, shipped by the cluster itself.

Theory of operation. `init(runtime_env={...})` validates the environment at once (a missing directory, a
package over the size limit, an unknown key: a clear error before anything runs), then makes each directory
a **package**: a zip with sorted entries and fixed timestamps, so equal contents give equal bytes and the
package is named by its SHA-256. The driver `put`s each package into the object store once and keeps the
ref for its lifetime; the job environment every worker receives carries the package's hash and object id.

A worker binding to the job (`apply`) looks for the package in its peer's cache directory
(`<peer run dir>/runtime_envs/<sha>`); if it is not there it reads the object (from whichever peer holds it,
as any object) and unpacks it to a temporary directory that is then renamed into place, so workers racing
on one peer never see half a package. `working_dir` goes first on `sys.path` and becomes the cwd;
`py_modules` go on `sys.path`; `env_vars` are set in the worker's environment before the job's first task.

Workers are leased per job, so one job's environment never leaks into another's. `pip` builds one virtual
environment per requirement set and peer (see `pip.py`), reused by hash.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import sys
import tempfile
import zipfile
from fnmatch import fnmatch

from p2pcompute.errors import InvalidArgumentError, P2PError

ALLOWED_KEYS = {"working_dir", "py_modules", "env_vars", "excludes", "pip", "config"}
MAX_PACKAGE_BYTES = int(os.environ.get("P2P_RUNTIME_ENV_MAX_BYTES", str(256 * 1024 * 1024)))
_ALWAYS_EXCLUDED = ("__pycache__", ".git", "*.pyc", ".venv", ".mypy_cache", ".pytest_cache")
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)
_KEEP: list = []


class RuntimeEnvSetupError(P2PError, RuntimeError):
    """A worker could not set up the job's runtime environment (its package could not be read or unpacked,
    or its pip install failed); the task did not run."""


def validate(runtime_env) -> dict:
    """A checked copy of `runtime_env`, or a clear InvalidArgumentError saying what is wrong."""
    if runtime_env is None:
        return {}
    if not isinstance(runtime_env, dict):
        raise InvalidArgumentError(f"runtime_env must be a dict, not {type(runtime_env).__name__}")
    unknown = set(runtime_env) - ALLOWED_KEYS
    if unknown:
        raise InvalidArgumentError(f"runtime_env has unknown key(s) {sorted(unknown)}; allowed: "
                                   f"{sorted(ALLOWED_KEYS)}")
    env = dict(runtime_env)
    wd = env.get("working_dir")
    if wd is not None:
        if not isinstance(wd, (str, os.PathLike)):
            raise InvalidArgumentError(f"runtime_env working_dir must be a path, not {type(wd).__name__}")
        if not os.path.isdir(wd):
            raise InvalidArgumentError(f"runtime_env working_dir {os.fspath(wd)!r} is not a directory")
        env["working_dir"] = os.path.abspath(os.fspath(wd))
    mods = env.get("py_modules")
    if mods is not None:
        if not isinstance(mods, (list, tuple)):
            raise InvalidArgumentError("runtime_env py_modules must be a list of paths (directories or .py files)")
        checked = []
        for m in mods:
            path = getattr(m, "__file__", None)
            if path is not None:  # a module object: ship its package directory (or its file)
                path = os.path.dirname(path) if os.path.basename(path) == "__init__.py" else path
            else:
                path = m
            if not isinstance(path, (str, os.PathLike)) or not os.path.exists(path):
                raise InvalidArgumentError(f"runtime_env py_modules entry {m!r} is not an existing path or module")
            checked.append(os.path.abspath(os.fspath(path)))
        env["py_modules"] = checked
    ev = env.get("env_vars")
    if ev is not None:
        if not isinstance(ev, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in ev.items()):
            raise InvalidArgumentError("runtime_env env_vars must be a dict of str to str")
    ex = env.get("excludes")
    if ex is not None and (not isinstance(ex, (list, tuple)) or not all(isinstance(p, str) for p in ex)):
        raise InvalidArgumentError("runtime_env excludes must be a list of glob patterns (str)")
    pip = env.get("pip")
    if pip is not None:
        from p2pcompute.runtime_env import pip as pip_env
        env["pip"] = pip_env.normalize(pip)
    return env


def _excluded(rel: str, patterns) -> bool:
    parts = rel.split("/")
    for pat in tuple(patterns) + _ALWAYS_EXCLUDED:
        pat = pat.rstrip("/")
        if fnmatch(rel, pat) or any(fnmatch(p, pat) for p in parts):
            return True
    return False


def package(path: str, excludes=(), max_bytes: int = MAX_PACKAGE_BYTES, progress=None) -> tuple[str, bytes]:
    """(sha256 hex, zip bytes) of a directory or a single file; the same contents give the same bytes."""
    buf = io.BytesIO()
    total = 0
    if os.path.isfile(path):
        entries = [(os.path.basename(path), path)]
    else:
        entries = []
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                full = os.path.join(root, name)
                rel = os.path.relpath(full, path).replace(os.sep, "/")
                if not _excluded(rel, excludes) and os.path.isfile(full):
                    entries.append((rel, full))
            dirs[:] = [d for d in dirs if not _excluded(os.path.relpath(os.path.join(root, d), path)
                                                          .replace(os.sep, "/"), excludes)]
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for i, (rel, full) in enumerate(entries):
            total += os.path.getsize(full)
            if total > max_bytes:
                raise InvalidArgumentError(
                    f"{path!r} holds more than {max_bytes} bytes (the runtime_env package limit); exclude large "
                    f"files with runtime_env={{'excludes': [...]}} or raise P2P_RUNTIME_ENV_MAX_BYTES")
            info = zipfile.ZipInfo(rel, _FIXED_TIME)
            info.external_attr = (os.stat(full).st_mode & 0o777) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            with open(full, "rb") as f:
                zf.writestr(info, f.read())
            if progress is not None:
                progress(i + 1, len(entries))
    data = buf.getvalue()
    return hashlib.sha256(data).hexdigest(), data


def unpack(data: bytes, dest: str) -> str:
    """Unpack a package into `dest` atomically (a temporary directory renamed into place)."""
    if os.path.isdir(dest):
        return dest
    parent = os.path.dirname(dest)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".unpack-", dir=parent)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for info in zf.infolist():
                target = os.path.realpath(os.path.join(tmp, info.filename))
                if not target.startswith(os.path.realpath(tmp) + os.sep):
                    raise RuntimeEnvSetupError(f"package entry {info.filename!r} points outside the package")
                zf.extract(info, tmp)
                mode = info.external_attr >> 16
                if mode:
                    os.chmod(target, mode)
        try:
            os.rename(tmp, dest)
        except OSError:
            if not os.path.isdir(dest):  # lost a race to another worker: theirs is as good
                raise
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


# ---- driver side ---------------------------------------------------------------------------------------

def prepare(runtime_env: dict, put) -> tuple[dict, list]:
    """The wire form of a validated environment, and the refs that keep its packages alive.

    `put(bytes) -> ObjectRef` stores a package once."""
    wire: dict = {}
    keep = []

    def ship(path: str, excludes=()) -> dict:
        sha, data = package(path, excludes)
        ref = put(data)
        keep.append(ref)
        return {"sha": sha, "object_id": ref._id, "owner": ref._owner, "size": len(data),
                "name": os.path.basename(path.rstrip(os.sep)), "file": os.path.isfile(path)}

    if runtime_env.get("working_dir"):
        wire["working_dir"] = ship(runtime_env["working_dir"], runtime_env.get("excludes") or ())
    if runtime_env.get("py_modules"):
        wire["py_modules"] = [ship(p, runtime_env.get("excludes") or ()) for p in runtime_env["py_modules"]]
    if runtime_env.get("env_vars"):
        wire["env_vars"] = dict(runtime_env["env_vars"])
    if runtime_env.get("pip"):
        wire["pip"] = runtime_env["pip"]
    return wire, keep


def for_call(rt, runtime_env: dict, put) -> dict:
    """The environment of a task or actor that names one: `{"key", "wire"}`, its own over the job's (top-level
    fields replace the job's; `env_vars` are merged). Prepared once per process and environment: packages are
    stored once and kept alive as long as the process lives (`rt.call_envs`)."""
    import hashlib
    import json
    cache = getattr(rt, "call_envs", None)
    if cache is None:
        cache = rt.call_envs = {}
    spec = json.dumps(runtime_env, sort_keys=True, default=str)
    hit = cache.get(spec)
    if hit is not None:
        return hit[0]
    wire, keep = prepare(runtime_env, put)
    job = (rt.job_env or {}).get("runtime_env") or {}
    merged = {**job, **wire}
    if job.get("env_vars") and wire.get("env_vars"):
        merged["env_vars"] = {**job["env_vars"], **wire["env_vars"]}
    key = hashlib.sha256(json.dumps(merged, sort_keys=True, default=str).encode()).hexdigest()[:16]
    env = {"key": key, "wire": merged}
    cache[spec] = (env, keep)
    return env


# ---- worker side ---------------------------------------------------------------------------------------

def _fetch(client, spec: dict) -> bytes:
    from p2pcompute.object_ref import ObjectRef
    ref = ObjectRef(spec["object_id"], spec["owner"])
    # Kept for the worker's life: a ref made from an id was never registered with its owner as a borrow, so
    # dropping it must not tell the owner anything (the driver holds the package for the job's life anyway).
    _KEEP.append(ref)
    value = client.get_values([ref], 300.0)[0]
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise RuntimeEnvSetupError(f"package {spec['sha'][:12]} is not a package")
    data = bytes(value)
    if hashlib.sha256(data).hexdigest() != spec["sha"]:
        raise RuntimeEnvSetupError(f"package {spec['sha'][:12]} arrived corrupted (hash mismatch)")
    return data


def ensure_package(client, spec: dict, cache_root: str) -> str:
    dest = os.path.join(cache_root, spec["sha"])
    if not os.path.isdir(dest):
        unpack(_fetch(client, spec), dest)
    return dest


def apply(wire: dict, client, cache_root: str) -> None:
    """Set up this worker for the job: packages on sys.path, cwd, environment variables, pip venv."""
    if not isinstance(wire, dict):
        return
    try:
        paths = []
        wd = wire.get("working_dir")
        if isinstance(wd, dict):
            wd_path = ensure_package(client, wd, cache_root)
            paths.append(wd_path)
        for mod in wire.get("py_modules") or ():
            if isinstance(mod, dict):
                # A module directory is importable under its own name: put its parent on the path.
                root = ensure_package(client, mod, cache_root)
                paths.append(root if mod.get("file") else _module_parent(root, mod.get("name", "")))
        env_vars = wire.get("env_vars")
        if isinstance(env_vars, dict):
            os.environ.update({str(k): str(v) for k, v in env_vars.items()})
        pip = wire.get("pip")
        if pip:
            from p2pcompute.runtime_env import pip as pip_env
            paths.append(pip_env.ensure(pip, cache_root))
    except RuntimeEnvSetupError:
        raise
    except Exception as exc:  # noqa: BLE001 - said to the task's caller, with its cause
        raise RuntimeEnvSetupError(f"could not set up the job's runtime_env: {type(exc).__name__}: {exc}") from exc
    sys.path[:0] = [p for p in paths if p not in sys.path]
    if isinstance(wd, dict):
        os.chdir(paths[0])
        os.environ["PWD"] = paths[0]


def _module_parent(root: str, name: str) -> str:
    """Packages of a module directory unpack as its contents: give it a parent named like the module."""
    parent = root + "-parent"
    link = os.path.join(parent, name)
    if not os.path.exists(link):
        os.makedirs(parent, exist_ok=True)
        try:
            os.symlink(root, link)
        except FileExistsError:
            pass
    return parent
