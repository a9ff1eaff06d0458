"""oscar-serve on a local Ray cluster over loopback HTTP: the transformers engine deployed by Ray
Serve answers completions and streaming chat, survives bad requests, exposes metrics, and holds a
bounded load (8 concurrent clients, 64 requests) with zero errors."""

import json
import socket
import statistics
import threading
import time
import urllib.error
import urllib.request

import pytest

from oscar_cluster.serving.app import app_builder, serve_config
from oscar_cluster.serving.config import parse_serve_config

pytestmark = pytest.mark.model

LOAD_CLIENTS, LOAD_REQUESTS, LOAD_BUDGET_S = 8, 64, 240


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url, body, timeout=120):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError as e:  # connection refused or timed out: reported as 599, never raised
        return 599, str(e).encode()


@pytest.fixture(scope="module")
def server(ray_cluster, smollm2_artifact):
    from ray import serve

    port = _free_port()
    cfg = parse_serve_config({"http": {"host": "127.0.0.1", "port": port},
                              "model": {"name": "smollm2-135m", "artifact": str(smollm2_artifact), "num_cpus": 0.5,
                                        "limits": {"max_tokens": 16, "max_context": 512},
                                        "autoscaling": {"min_replicas": 1, "max_replicas": 1,
                                                        "target_ongoing_requests": 4, "max_ongoing_requests": 16}}})
    doc = serve_config(cfg)
    serve.start(http_options=doc["http_options"])
    serve.run(app_builder(doc["applications"][0]["args"]), name="oscar-test", route_prefix="/")
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=5) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    yield base
    serve.delete("oscar-test")
    serve.shutdown()


def test_completion_and_streaming_chat_over_http(server):
    status, raw = _post(f"{server}/v1/completions", {"model": "smollm2-135m", "prompt": "The capital of France is",
                                                     "max_tokens": 6, "temperature": 0})
    assert status == 200, raw
    assert "Paris" in json.loads(raw)["choices"][0]["text"]
    req = urllib.request.Request(f"{server}/v1/chat/completions", headers={"content-type": "application/json"},
                                 data=json.dumps({"model": "smollm2-135m", "stream": True, "max_tokens": 6,
                                                  "temperature": 0,
                                                  "messages": [{"role": "user", "content": "Hi!"}]}).encode())
    with urllib.request.urlopen(req, timeout=120) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [ln.decode().strip() for ln in r if ln.startswith(b"data: ")]
    assert lines[-1] == "data: [DONE]" and len(lines) >= 3


def test_bad_requests_then_metrics(server):
    status, raw = _post(f"{server}/v1/completions", {"model": "nope", "prompt": "x"})
    assert status == 404 and json.loads(raw)["error"]["param"] == "model"
    status, raw = _post(f"{server}/v1/completions", {"model": "smollm2-135m", "prompt": "x", "max_tokens": -3})
    assert status == 400
    with urllib.request.urlopen(f"{server}/metrics", timeout=30) as r:
        text = r.read().decode()
    assert "oscar:bits_per_element{" in text and "oscar:requests_total{" in text
    status, _ = _post(f"{server}/v1/completions", {"model": "smollm2-135m", "prompt": "Hi", "max_tokens": 1})
    assert status == 200, "still serving"


def test_bounded_load_has_no_errors(server, capsys):
    latencies, errors = [], []
    lock = threading.Lock()
    counter = iter(range(LOAD_REQUESTS))
    stop_at = time.time() + LOAD_BUDGET_S

    def client():
        while time.time() < stop_at:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            t0 = time.perf_counter()
            status, raw = _post(f"{server}/v1/completions", {"model": "smollm2-135m", "prompt": f"Count to {i}:",
                                                             "max_tokens": 4, "temperature": 0.7, "seed": i})
            with lock:
                (latencies if status == 200 else errors).append(time.perf_counter() - t0 if status == 200 else status)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(LOAD_CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(LOAD_BUDGET_S + 30)
    wall = time.perf_counter() - t0
    assert not errors, f"errors: {errors}"
    assert len(latencies) == LOAD_REQUESTS, f"only {len(latencies)} of {LOAD_REQUESTS} finished in {LOAD_BUDGET_S} s"
    q = statistics.quantiles(latencies, n=100)
    with capsys.disabled():
        print(f"\nload: {LOAD_CLIENTS} clients, {LOAD_REQUESTS} requests in {wall:.1f} s, "
              f"p50 {q[49]:.2f} s, p99 {q[98]:.2f} s, errors 0")


def test_replica_killed_under_load_fails_cleanly_and_recovers(server):
    """A replica killed mid-load: requests in flight end with 200 or a 5xx (never hang), and the
    app serves again once Serve has replaced the replica."""
    import ray

    statuses = []
    lock = threading.Lock()

    def client(i):
        status, _ = _post(f"{server}/v1/completions", {"model": "smollm2-135m", "prompt": f"Say {i}", "max_tokens": 8,
                                                       "temperature": 0}, timeout=120)
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    replicas = [a for a in ray.util.list_named_actors(all_namespaces=True)
                if a["name"].startswith("SERVE_REPLICA::oscar-test")]
    assert replicas, "no replica actor found"
    ray.kill(ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"]), no_restart=True)
    for t in threads:
        t.join(150)
    assert len(statuses) == 6 and all(s == 200 or 500 <= s < 599 for s in statuses), statuses
    deadline = time.time() + 90
    while time.time() < deadline:
        status, _ = _post(f"{server}/v1/completions", {"model": "smollm2-135m", "prompt": "Hi", "max_tokens": 2},
                          timeout=30)
        if status == 200:
            break
        time.sleep(2)
    assert status == 200, "the app did not recover after the replica was killed"
