"""mlkit.serve on the shared embedded peer, over real HTTP on loopback: status codes and bodies, streaming,
back-pressure, composition, batching, in-place updates, rolling updates under load, autoscaling, deletion."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import urllib.error
import urllib.request

import pytest

pytest.importorskip("uvicorn")

import p2pcompute as p2p  # noqa: E402
from itest_util import alive, wait_until  # noqa: E402
from p2pcompute.mlkit import serve  # noqa: E402
from p2pcompute.mlkit.serve import handle as hd  # noqa: E402
from p2pcompute.mlkit.serve import loadgen, state  # noqa: E402
from p2pcompute.mlkit.serve.proxy import Proxy  # noqa: E402

pytestmark = [pytest.mark.mlkit, pytest.mark.integration]


@pytest.fixture(scope="module")
def url(_ml_cluster_session):
    if not p2p.is_initialized():
        p2p.init(num_cpus=2)
    serve.start(http_options={"port": 0})
    (base,) = serve.proxy_urls().values()
    yield base
    serve.shutdown()


def http(url: str, body=None, *, method=None, raw: bytes | None = None) -> tuple[int, bytes, dict]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data is not None else "GET"))
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read(), {k.lower(): v for k, v in r.headers.items()}  # names are case-blind
    except urllib.error.HTTPError as e:
        return e.code, e.read(), {k.lower(): v for k, v in e.headers.items()}


@serve.deployment
class Echo:
    async def __call__(self, request):
        path = request.route_path
        if path == "/raw":
            return (await request.body())[::-1]
        if path == "/text":
            return "plain " + request.query_params.get("q", "")
        if path == "/fail":
            raise KeyError("no such model")
        if path == "/stream":
            n = int(request.query_params["n"])
            return (f"chunk{i};" for i in range(n))
        return {"sum": sum(await request.json()), "method": request.method}

    def count(self, n):
        yield from range(n)

    def pid(self):
        return os.getpid()


def test_http_codes_bodies_and_streams(url):
    serve.run(Echo.bind(), name="echo", route_prefix="/echo")
    assert http(url + "/echo", [1, 2, 3])[:2] == (200, b'{"sum": 6, "method": "POST"}')
    assert http(url + "/echo/raw", raw=b"abc\x00")[:2] == (200, b"\x00cba")
    status, body, headers = http(url + "/echo/text?q=hi")
    assert (status, body) == (200, b"plain hi") and headers["content-type"].startswith("text/plain")
    status, body, _ = http(url + "/echo", raw=b"{not json")
    assert status == 400 and b"not valid JSON" in body
    status, body, _ = http(url + "/echo/fail")
    assert status == 500 and b"KeyError" in body and b"no such model" in body
    status, body, _ = http(url + "/nowhere")
    assert status == 404 and b"/echo" in body
    assert http(url + "/-/healthz")[:2] == (200, b"success")
    assert json.loads(http(url + "/-/routes")[1]) == {"/echo": "echo"}
    status, body, headers = http(url + "/echo/stream?n=500")
    assert status == 200 and headers.get("transfer-encoding") == "chunked"
    assert body.decode() == "".join(f"chunk{i};" for i in range(500))
    handle = serve.get_app_handle("echo")
    assert list(handle.options(stream=True).count.remote(5)) == [0, 1, 2, 3, 4]
    with pytest.raises(TypeError, match="stream=True"):
        handle.count.remote(3).result()


@serve.deployment(max_ongoing_requests=1, max_queued_requests=1)
class Slow:
    async def __call__(self, request):
        await asyncio.sleep(0.3)
        return "done"


def test_overload_answers_503(url):
    serve.run(Slow.bind(), name="slow", route_prefix="/slow")
    res = asyncio.run(loadgen.run_load(url + "/slow", total=8, concurrency=8, keep_bodies=True))
    codes = sorted(res.statuses)
    assert codes.count(200) >= 2 and codes.count(503) >= 3, codes
    assert set(codes) <= {200, 503}
    msg = next(b for s, b in zip(res.statuses, res.bodies) if s == 503)
    assert b"max_ongoing_requests" in msg and b"overloaded" in msg
    assert _asgi(Proxy(request_timeout_s=0.05), "/slow")[0] == 408     # a proxy with a request timeout
    assert _asgi(Proxy(request_timeout_s=10), "/slow") == (200, b"done")
    serve.delete("slow")


def _asgi(proxy, path: str) -> tuple[int, bytes]:
    """One GET through a proxy object in this process (the same ASGI app an agent serves)."""
    sent = []

    async def receive():
        return {"type": "http.request", "body": b""}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "path": path, "method": "GET", "headers": [], "client": ("127.0.0.1", 1)}
    asyncio.run_coroutine_threadsafe(proxy(scope, receive, send), hd.serve_loop()).result(60)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


@serve.deployment
class Tokenizer:
    def __call__(self, text):
        return text.split()


@serve.deployment(num_replicas=2)
class Counter:
    def __init__(self, factor):
        self.factor = factor

    async def __call__(self, words):
        return len(words) * self.factor


@serve.deployment
class Pipeline:
    def __init__(self, tokenizer, counter):
        self.tokenizer, self.counter = tokenizer, counter

    async def __call__(self, request):
        text = (await request.json())["text"]
        words = self.tokenizer.remote(text)          # not awaited: passed on as a response
        return {"n": await self.counter.remote(words)}


def test_composition_of_three_deployments(url):
    handle = serve.run(Pipeline.bind(Tokenizer.bind(), Counter.bind(10)), name="pipe", route_prefix="/pipe")
    assert http(url + "/pipe", {"text": "a b c d"})[:2] == (200, b'{"n": 40}')
    tok = serve.get_deployment_handle("Tokenizer", "pipe")
    cnt = serve.get_deployment_handle("Counter", "pipe")
    assert cnt.remote(tok.remote("x y")).result(timeout_s=30) == 20   # a response passed to another call
    assert serve.status().applications["pipe"].deployments["Counter"].replicas == {"READY": 2}
    assert isinstance(handle, serve.DeploymentHandle)
    serve.delete("pipe")


@serve.deployment(max_ongoing_requests=64)
class Batched:
    def __init__(self):
        self.sizes = []

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.05)
    async def square(self, xs):
        self.sizes.append(len(xs))
        return [x * x for x in xs]

    async def __call__(self, request):
        return await self.square(await request.json())

    def batch_sizes(self):
        return self.sizes


def test_batching_over_http(url):
    handle = serve.run(Batched.bind(), name="batched", route_prefix="/batched")
    res = asyncio.run(loadgen.run_load(url + "/batched", body=7, total=64, concurrency=32, keep_bodies=True))
    assert res.ok == 64 and set(res.bodies) == {b"49"}
    sizes = handle.batch_sizes.remote().result()
    assert sum(sizes) == 64 and max(sizes) > 1 and max(sizes) <= 16
    serve.delete("batched")


def make_versioned(tag: str):
    @serve.deployment(num_replicas=2, name="Versioned")
    class Versioned:
        def __init__(self):
            self.scale = 0

        def reconfigure(self, config):
            self.scale = config["scale"]

        async def __call__(self, request):
            await asyncio.sleep(0.005)
            return {"tag": tag, "scale": self.scale}
    return Versioned


def _names(app):
    return sorted(s.name for s in state.list_slots(app, linearizable=True))


def test_run_twice_updates_in_place_then_rolls_under_load(url):
    v1 = make_versioned("v1")
    serve.run(v1.options(user_config={"scale": 1}).bind(), name="upd", route_prefix="/upd")
    before = _names("upd")
    assert len(before) == 2
    serve.run(v1.options(user_config={"scale": 2}).bind(), name="upd", route_prefix="/upd")
    assert _names("upd") == before                           # same replicas, reconfigured in place
    assert json.loads(http(url + "/upd")[1]) == {"tag": "v1", "scale": 2}

    results, done = {}, threading.Event()
    loader = threading.Thread(target=lambda: results.setdefault("r", asyncio.run(loadgen.run_load(
        url + "/upd", duration_s=60, concurrency=4, rate_per_s=150, keep_bodies=True, stop=done.is_set))))
    loader.start()
    try:
        v2 = make_versioned("v2")
        serve.run(v2.options(user_config={"scale": 3}).bind(), name="upd", route_prefix="/upd")
        assert json.loads(http(url + "/upd")[1]) == {"tag": "v2", "scale": 3}
    finally:
        done.set()
        loader.join(60)
    res = results["r"]
    tags = [json.loads(b)["tag"] for s, b in zip(res.statuses, res.bodies) if s == 200]
    assert res.failed == 0, sorted(set(res.statuses))
    assert len(res.statuses) > 100 and "v1" in tags and "v2" in tags
    after = _names("upd")
    assert len(after) == 2 and not set(after) & set(before)
    serve.delete("upd")


@serve.deployment(autoscaling_config={"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 1,
                                      "upscale_delay_s": 0.5, "downscale_delay_s": 1.0},
                  max_ongoing_requests=4)
class Elastic:
    async def __call__(self, request):
        await asyncio.sleep(0.1)
        return "ok"


def test_autoscaling_up_under_load_and_down_after(url):
    serve.run(Elastic.bind(), name="elastic", route_prefix="/elastic")
    assert len(_names("elastic")) == 1
    done = threading.Event()
    loader = threading.Thread(target=lambda: asyncio.run(
        loadgen.run_load(url + "/elastic", duration_s=40, concurrency=10, stop=done.is_set)))
    loader.start()
    try:
        wait_until(lambda: serve.status().applications["elastic"].deployments["Elastic"].replicas.get("READY", 0)
                   >= 3, 30, interval_s=0.1, what="upscaling to 3 replicas")
    finally:
        done.set()
        loader.join(60)
    wait_until(lambda: serve.status().applications["elastic"].deployments["Elastic"].replicas == {"READY": 1},
               30, interval_s=0.1, what="downscaling to 1 replica")
    serve.delete("elastic")


def test_delete_frees_replicas_and_route(url):
    serve.run(Echo.bind(), name="gone", route_prefix="/gone")
    names = _names("gone")
    assert names and http(url + "/gone", [1])[0] == 200
    pid = serve.get_app_handle("gone").pid.remote().result()
    serve.delete("gone")
    assert _names("gone") == [] and "gone" not in serve.status().applications
    for name in names:
        wait_until(lambda: not _exists(name), 20, interval_s=0.05, what=f"replica {name} to stop")
    wait_until(lambda: not alive([pid]), 20, interval_s=0.05, what="the replica's process to exit")
    wait_until(lambda: http(url + "/gone", [1])[0] == 404, 10, interval_s=0.1, what="the route to go")


def _exists(name: str) -> bool:
    try:
        p2p.get_actor(name, namespace=state.NAMESPACE)
        return True
    except ValueError:
        return False


def test_bad_arguments_say_what_to_do(url):
    with pytest.raises(TypeError, match="bind"):
        serve.run(Echo, name="x")
    with pytest.raises(ValueError, match="max_ongoing_requests"):
        Echo.options(max_ongoing_requests=0)
    with pytest.raises(ValueError, match="unknown deployment option"):
        Echo.options(num_replica=2)
    with pytest.raises(ValueError, match="route_prefix"):
        serve.run(Echo.bind(), name="x", route_prefix="noslash")
    with pytest.raises(ValueError, match="no application"):
        serve.get_app_handle("missing")

    @serve.deployment
    class Broken:
        def __init__(self):
            raise RuntimeError("weights file missing")

    with pytest.raises(serve.DeploymentFailedError, match="weights file missing"):
        serve.run(Broken.bind(), name="broken", route_prefix="/broken", timeout_s=60)
    serve.delete("broken")


def test_fastapi_ingress(url):
    fastapi = pytest.importorskip("fastapi")
    app = fastapi.FastAPI()

    @serve.deployment
    @serve.ingress(app)
    class Api:
        def __init__(self):
            self.greeting = "hello"

        @app.get("/hi/{who}")
        def hi(self, who: str):
            return {"msg": f"{self.greeting} {who}"}

    serve.run(Api.bind(), name="api", route_prefix="/api")
    assert http(url + "/api/hi/bob")[:2] == (200, b'{"msg":"hello bob"}')
    assert http(url + "/api/nope")[0] == 404
    serve.delete("api")


CONFIG = """
applications:
  - name: cfg
    route_prefix: /cfg
    import_path: serve_cfg_app:app
    deployments:
      - name: Greeter
        num_replicas: 2
        user_config: {greeting: hey}
"""

APP_MODULE = """
from p2pcompute.mlkit import serve

@serve.deployment
class Greeter:
    def __init__(self):
        self.greeting = "hello"
    def reconfigure(self, config):
        self.greeting = config["greeting"]
    async def __call__(self, request):
        return self.greeting + " " + request.query_params.get("who", "?")

app = Greeter.bind()
"""


def test_cli_deploy_status_from_a_config_file(url, tmp_path, capsys):
    from p2pcompute.mlkit.serve import cli
    (tmp_path / "serve_cfg_app.py").write_text(APP_MODULE)
    (tmp_path / "serve.yaml").write_text(CONFIG)
    assert cli.main(["deploy", str(tmp_path / "serve.yaml")]) == 0
    assert http(url + "/cfg?who=ann")[:2] == (200, b"hey ann")
    assert serve.status().applications["cfg"].deployments["Greeter"].replicas == {"READY": 2}
    assert cli.main(["status"]) == 0
    out = capsys.readouterr().out
    assert "app cfg  RUNNING  route /cfg" in out and "Greeter: HEALTHY, target 2, READY 2" in out
    (tmp_path / "bad.yaml").write_text("applications:\n  - name: x\n")
    assert cli.main(["deploy", str(tmp_path / "bad.yaml")]) == 1
    assert "needs an import_path" in capsys.readouterr().err
    serve.delete("cfg")
