"""Runtime environments on an embedded peer, and the checks that make bad input fail at submission.

Shipping across peers with distinct homes is in test_jobs.py; here: env_vars in tasks and actors, a
working_dir's package being content-addressed and unpacked safely, every kind of bad input, and a pip
environment (skipped where the package registry cannot be reached).
"""

from __future__ import annotations

import io
import json
import os
import socket
import zipfile

import pytest

from itest_util import run_driver
from p2pcompute import runtime_env
from p2pcompute.errors import InvalidArgumentError

pytestmark = pytest.mark.integration


def test_env_vars_reach_tasks_and_actors_not_the_driver(tmp_path):
    out = run_driver("""
        import json, os
        import p2pcompute as p2p
        p2p.init(num_cpus=1, runtime_env={"env_vars": {"RE_COLOUR": "teal", "RE_N": "7"}})

        @p2p.remote
        def env():
            return os.environ.get("RE_COLOUR"), os.environ.get("RE_N")

        @p2p.remote
        class Reader:
            def env(self):
                return os.environ.get("RE_COLOUR")

        print(json.dumps({"task": p2p.get(env.remote()), "actor": p2p.get(Reader.remote().env.remote()),
                          "driver": os.environ.get("RE_COLOUR")}))
    """, tmp_path).stdout
    got = json.loads(out.strip().splitlines()[-1])
    assert got == {"task": ["teal", "7"], "actor": "teal", "driver": None}


def test_bad_runtime_env_fails_at_init_before_anything_starts(tmp_path):
    out = run_driver("""
        import p2pcompute as p2p
        from p2pcompute.errors import InvalidArgumentError
        for env in ({"working_dir": "/no/such/dir"}, {"env_vars": {"A": 1}}, {"pip": "requests"},
                    {"workingdir": "."}):
            try:
                p2p.init(num_cpus=1, runtime_env=env)
            except InvalidArgumentError as exc:
                print("refused:", exc)
            assert not p2p.is_initialized()
    """, tmp_path).stdout
    lines = [line for line in out.splitlines() if line.startswith("refused:")]
    assert len(lines) == 4
    assert "is not a directory" in lines[0] and "dict of str to str" in lines[1]
    assert "list of requirement strings" in lines[2] and "unknown key" in lines[3]


def test_validate_names_what_is_wrong(tmp_path):
    (tmp_path / "m.py").write_text("x = 1\n")
    assert runtime_env.validate(None) == {}
    checked = runtime_env.validate({"working_dir": str(tmp_path), "py_modules": [str(tmp_path / "m.py")],
                                    "excludes": ["*.bin"], "pip": ["b==1", "a"]})
    assert checked["pip"] == {"packages": ["a", "b==1"]}
    bad = [("not a dict", "must be a dict"), ({"py_modules": "m.py"}, "must be a list"),
           ({"py_modules": [str(tmp_path / "nope")]}, "not an existing path"),
           ({"excludes": "*.bin"}, "glob patterns"), ({"pip": ["--index-url=x"]}, "not pip options"),
           ({"working_dir": 3}, "must be a path")]
    for env, message in bad:
        with pytest.raises(InvalidArgumentError, match=message):
            runtime_env.validate(env)


def test_packages_are_content_addressed_and_bounded(tmp_path):
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "a.py").write_text("A = 1\n")
    (src / "b.txt").write_text("b\n")
    (src / "skip.bin").write_bytes(b"\0" * 100)
    (src / "__pycache__").mkdir()
    (src / "__pycache__" / "x.pyc").write_bytes(b"junk")
    sha1, data1 = runtime_env.package(str(src), ["*.bin"])
    os.utime(src / "b.txt", (1, 1))  # timestamps do not matter
    sha2, data2 = runtime_env.package(str(src), ["*.bin"])
    assert sha1 == sha2 and data1 == data2
    assert sorted(zipfile.ZipFile(io.BytesIO(data1)).namelist()) == ["b.txt", "pkg/a.py"]
    (src / "b.txt").write_text("changed\n")
    assert runtime_env.package(str(src), ["*.bin"])[0] != sha1
    with pytest.raises(InvalidArgumentError, match="package limit"):
        runtime_env.package(str(src), max_bytes=4)
    dest = runtime_env.unpack(data1, str(tmp_path / "cache" / sha1))
    assert (tmp_path / "cache" / sha1 / "pkg" / "a.py").read_text() == "A = 1\n"
    assert runtime_env.unpack(b"not used: already there", dest) == dest


def test_unpack_refuses_entries_outside_the_package(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("../escape.txt", "no")
    with pytest.raises(runtime_env.RuntimeEnvSetupError, match="outside"):
        runtime_env.unpack(buf.getvalue(), str(tmp_path / "cache" / "x"))
    assert not (tmp_path / "cache" / "escape.txt").exists() and not (tmp_path / "cache" / "x").exists()


def _registry_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=3).close()
        return True
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_pip_environment_installs_a_package_once(tmp_path):
    # Building the environment takes ~35 s of pip: opt in (P2P_TEST_PIP=1) to keep the suite in budget.
    if os.environ.get("P2P_TEST_PIP") != "1":
        pytest.skip("set P2P_TEST_PIP=1 to build a pip runtime_env (needs the package registry, ~35 s)")
    if not _registry_reachable():
        pytest.skip("the package registry (pypi.org) is not reachable from here")
    out = run_driver("""
        import json
        import p2pcompute as p2p
        try:
            import inflection
            raise SystemExit("inflection is installed already: the test would prove nothing")
        except ImportError:
            pass
        p2p.init(num_cpus=1, runtime_env={"pip": ["inflection==0.5.1"]})

        @p2p.remote
        def camel(s):
            import inflection
            return inflection.camelize(s), inflection.__file__
        print(json.dumps(p2p.get([camel.remote("runtime_env"), camel.remote("pip_env")])))
    """, tmp_path, timeout_s=280).stdout
    results = json.loads(out.strip().splitlines()[-1])
    assert [r[0] for r in results] == ["RuntimeEnv", "PipEnv"]
    assert all("runtime_envs" in r[1] and "pip-" in r[1] for r in results)


def test_tasks_and_actors_with_their_own_runtime_env_get_workers_of_their_own(tmp_path):
    helper = tmp_path / "envdir"
    helper.mkdir()
    (helper / "shipped_helper.py").write_text("WHAT = 'from the working_dir'\n")
    out = run_driver(f"""
        import json, os
        import p2pcompute as p2p
        p2p.init(num_cpus=2, runtime_env={{"env_vars": {{"RE_JOB": "job", "RE_X": "job"}}}})

        @p2p.remote
        def env():
            return os.environ.get("RE_JOB"), os.environ.get("RE_X"), os.getpid()

        @p2p.remote
        def shipped():
            import shipped_helper
            return shipped_helper.WHAT

        @p2p.remote
        class Reader:
            def env(self):
                return os.environ.get("RE_X")

        plain = [p2p.get(env.remote()) for _ in range(3)]
        own = env.options(runtime_env={{"env_vars": {{"RE_X": "task"}}}})
        mine = [p2p.get(own.remote()) for _ in range(3)]
        plain_after = p2p.get(env.remote())
        actor = Reader.options(runtime_env={{"env_vars": {{"RE_X": "actor"}}}}).remote()
        wd = p2p.get(shipped.options(runtime_env={{"working_dir": {str(helper)!r}}}).remote())
        print(json.dumps({{"plain": plain, "mine": mine, "after": plain_after,
                          "actor": p2p.get(actor.env.remote()), "wd": wd}}))
    """, tmp_path, timeout_s=120).stdout
    got = json.loads(out.strip().splitlines()[-1])
    assert {tuple(r[:2]) for r in got["plain"]} == {("job", "job")}
    # The task's env_vars merge over the job's, on workers that never ran a plain task.
    assert {tuple(r[:2]) for r in got["mine"]} == {("job", "task")}
    assert not {r[2] for r in got["mine"]} & {r[2] for r in got["plain"] + [got["after"]]}
    assert tuple(got["after"][:2]) == ("job", "job")
    assert got["actor"] == "actor"
    assert got["wd"] == "from the working_dir"


def test_a_bad_runtime_env_on_a_task_fails_at_the_call():
    import p2pcompute as p2p

    @p2p.remote
    def f():
        return 1

    with pytest.raises(InvalidArgumentError, match="working_dir"):
        f.options(runtime_env={"working_dir": "/no/such/directory/anywhere"})
