"""schemathesis against the served OpenAPI schema (bounded examples, in process): no generated or
mutated request produces a server error, no CORS headers are sent, and every 4xx is OpenAI JSON."""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from starlette.testclient import TestClient

from oscar_cluster.serving.config import parse_serve_config
from oscar_cluster.serving.handler import OpenAIHandler, build_api

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def api(smollm2_artifact):
    cfg = parse_serve_config({"model": {"name": "smollm2-135m", "artifact": str(smollm2_artifact),
                                        "limits": {"max_tokens": 4, "max_context": 256, "max_body_bytes": 8192}}})
    return build_api(OpenAIHandler(cfg))


def test_no_server_errors(api):
    """Every operation of /openapi.json, with generated bodies (valid ones and schemathesis's
    mutations), answered in process: never a 5xx; POST errors carry the OpenAI error JSON."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", api)
    ops = [r.ok() for r in schema.get_all_operations()]
    assert {(o.method.upper(), o.path) for o in ops} >= {("POST", "/v1/completions"), ("POST", "/v1/chat/completions"),
                                                         ("GET", "/v1/models"), ("GET", "/health"), ("GET", "/metrics")}
    seen = {"2xx": 0, "4xx": 0}
    for op in ops:
        @given(case=op.as_strategy())
        @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case):
            response = case.call()
            case.validate_response(response, checks=[not_a_server_error])
            seen["2xx" if response.status_code < 300 else "4xx"] += 1
            if 400 <= response.status_code < 500 and case.method.upper() == "POST":
                assert set(response.json()["error"]) >= {"message", "type", "code"}

        run()
    assert seen["2xx"] > 0


def test_no_cors_by_default(api):
    with TestClient(api) as c:
        r = c.options("/v1/completions", headers={"Origin": "https://evil.example",
                                                  "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in {k.lower() for k in r.headers}
        r = c.get("/health", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in {k.lower() for k in r.headers}
