"""The OpenAI endpoints on the real SmolLM2 through OscarCache, mounted on a plain FastAPI app
(no Ray): answers, streaming, validation errors, limits, auth and metrics."""

import json

import pytest
from starlette.testclient import TestClient

from oscar_cluster.serving.config import parse_serve_config
from oscar_cluster.serving.handler import OpenAIHandler, build_api

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def client(smollm2_artifact):
    cfg = parse_serve_config({"model": {"name": "smollm2-135m", "artifact": str(smollm2_artifact),
                                        "limits": {"max_tokens": 32, "max_context": 256, "max_body_bytes": 4096}}})
    handler = OpenAIHandler(cfg)
    with TestClient(build_api(handler)) as c:
        yield c, handler


def test_completion_is_greedy_and_matches_the_engine(client):
    c, handler = client
    body = {"model": "smollm2-135m", "prompt": "The capital of France is", "max_tokens": 6, "temperature": 0}
    r = c.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["object"] == "text_completion" and out["usage"]["completion_tokens"] <= 6
    assert out["choices"][0]["finish_reason"] in ("length", "stop")
    again = c.post("/v1/completions", json=body).json()
    assert again["choices"][0]["text"] == out["choices"][0]["text"], "greedy decoding is deterministic"
    assert "Paris" in out["choices"][0]["text"]


def test_chat_streams_sse_chunks(client):
    c, _ = client
    body = {"model": "smollm2-135m", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8,
            "temperature": 0, "stream": True}
    with c.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(ch["object"] == "chat.completion.chunk" for ch in chunks)
    text = "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks)
    assert text.strip(), "some content streamed"
    assert chunks[-1]["choices"][0]["finish_reason"] in ("length", "stop")
    whole = c.post("/v1/chat/completions", json={**body, "stream": False}).json()
    assert whole["choices"][0]["message"]["content"] == text, "streamed text equals the whole answer"


@pytest.mark.parametrize("payload,status,param", [
    (b"{not json", 400, None),
    (b"[1, 2]", 400, None),
    (json.dumps({"model": "gpt-9", "prompt": "hi"}).encode(), 404, "model"),
    (json.dumps({"model": "smollm2-135m", "prompt": "hi", "max_tokens": -1}).encode(), 400, "max_tokens"),
    (json.dumps({"model": "smollm2-135m", "prompt": "hi", "max_tokens": 33}).encode(), 400, "max_tokens"),
    (json.dumps({"model": "smollm2-135m", "prompt": "word " * 300}).encode(), 400, "prompt"),
    (json.dumps({"model": "smollm2-135m", "prompt": "x" * 5000}).encode(), 413, None),
    (json.dumps({"model": "smollm2-135m", "prompt": ""}).encode(), 400, "prompt"),
    (json.dumps({"model": "smollm2-135m", "prompt": "hi", "temperature": 9}).encode(), 400, "temperature"),
])
def test_bad_requests_get_4xx_json_and_the_server_keeps_serving(client, payload, status, param):
    c, _ = client
    r = c.post("/v1/completions", content=payload, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == status and err["message"] and err["param"] == param
    ok = c.post("/v1/completions", json={"model": "smollm2-135m", "prompt": "Hi", "max_tokens": 2, "temperature": 0})
    assert ok.status_code == 200


def test_models_health_and_metrics(client):
    c, handler = client
    models = c.get("/v1/models").json()
    assert models["data"][0]["id"] == "smollm2-135m" and 2.2 < models["data"][0]["bits_per_element"] < 2.6
    assert c.get("/health").json()["status"] == "ok"
    c.post("/v1/completions", json={"model": "smollm2-135m", "prompt": "One two", "max_tokens": 4, "temperature": 0})
    text = c.get("/metrics").text
    vals = {}
    for line in text.splitlines():
        if line.startswith("oscar:") and "{" in line:
            name, rest = line.split("{", 1)
            vals.setdefault(name, []).append(float(rest.rsplit(" ", 1)[1]))
    bpe = vals["oscar:bits_per_element"][0]
    assert 2.2 < bpe < 2.6
    # bf16 needs 16 bits per element: the ratio reported must be 16 / bits
    assert vals["oscar:kv_compression_ratio"][0] == pytest.approx(16 / bpe, rel=1e-6)
    assert vals["oscar:kv_bytes_per_token"][0] == pytest.approx(bpe / 8 * 2 * 30 * 3 * 64, rel=1e-6)
    assert sum(vals["oscar:requests_total"]) >= 2 and max(vals["oscar:generation_tokens_total"]) >= 4
    assert vals["oscar:time_to_first_token_seconds_count"][0] >= 1
    assert vals["oscar:kv_cache_bytes_in_use"][0] == 0, "no request running now"
    assert any(s == '400' for s in [l.split('status="')[1].split('"')[0] for l in text.splitlines()
                                    if l.startswith("oscar:requests_total")])


def test_bearer_token(smollm2_artifact, monkeypatch, client):
    _, handler = client
    monkeypatch.setenv("OSCAR_TEST_TOKEN", "s3cret")
    cfg = parse_serve_config({"auth_token_env": "OSCAR_TEST_TOKEN",
                              "model": {"name": "smollm2-135m", "artifact": str(smollm2_artifact)}})
    secured = OpenAIHandler(cfg, engine=handler.engine)
    with TestClient(build_api(secured)) as c:
        body = {"model": "smollm2-135m", "prompt": "Hi", "max_tokens": 1}
        assert c.post("/v1/completions", json=body).status_code == 401
        assert c.post("/v1/completions", json=body, headers={"authorization": "Bearer wrong"}).status_code == 401
        assert c.post("/v1/completions", json=body, headers={"authorization": "Bearer s3cret"}).status_code == 200
