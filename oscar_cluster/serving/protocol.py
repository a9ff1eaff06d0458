"""OpenAI-compatible request parsing and response shapes (pure functions, no web framework).

`parse_completion(body, ...)` and `parse_chat(body, ...)` turn raw request bytes into a
`GenerationRequest` or raise `RequestError(status, message, param)`; `error_body` is the OpenAI
error JSON every 4xx carries.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from .config import Limits

__all__ = ["COMPLETION_BODY", "CHAT_BODY", "openapi_body", "RequestError", "GenerationRequest", "parse_completion", "parse_chat", "error_body", "completion_body",
           "completion_chunk", "chat_body", "chat_chunk", "models_body"]


_SAMPLING = {
    "model": {"type": "string"},
    "max_tokens": {"type": "integer", "minimum": 1},
    "temperature": {"type": "number", "minimum": 0, "maximum": 2},
    "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
    "stream": {"type": "boolean"},
    "stop": {"oneOf": [{"type": "string", "minLength": 1},
                       {"type": "array", "items": {"type": "string", "minLength": 1}, "maxItems": 4}]},
    "seed": {"type": "integer"},
    "n": {"type": "integer", "enum": [1]},
}
COMPLETION_BODY = {"type": "object", "required": ["model", "prompt"],
                   "properties": {"prompt": {"type": "string", "minLength": 1}, **_SAMPLING}}
CHAT_BODY = {"type": "object", "required": ["model", "messages"],
             "properties": {"messages": {"type": "array", "minItems": 1, "items": {
                 "type": "object", "required": ["role", "content"],
                 "properties": {"role": {"enum": ["system", "user", "assistant"]}, "content": {"type": "string"}}}},
                 **_SAMPLING}}


def openapi_body(schema: dict) -> dict:
    """`openapi_extra` for a route that reads its JSON body itself (documents it in /openapi.json)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


class RequestError(Exception):
    """A client error: HTTP `status`, a message naming the problem, the offending `param`."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind


@dataclass
class GenerationRequest:
    model: str
    prompt: str | None = None  # completions
    messages: list[dict] | None = None  # chat
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    stream: bool = False
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex[:24])


def error_body(err: RequestError) -> dict:
    return {"error": {"message": err.message, "type": err.kind, "param": err.param, "code": err.status}}


def _load(body: bytes, limits: Limits) -> dict:
    if len(body) > limits.max_body_bytes:
        raise RequestError(413, f"request body of {len(body)} bytes exceeds the limit of {limits.max_body_bytes}")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError(400, f"request body is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise RequestError(400, "request body must be a JSON object")
    return data


def _number(data: dict, key: str, default, lo, hi, integer=False):
    v = data.get(key, default)
    if v is None:
        return default
    ok = isinstance(v, int) if integer else isinstance(v, (int, float))
    if not ok or isinstance(v, bool):
        raise RequestError(400, f"'{key}' must be {'an integer' if integer else 'a number'}, got {v!r}", key)
    if not lo <= v <= hi:
        raise RequestError(400, f"'{key}' must be in [{lo}, {hi}], got {v}", key)
    return v


_COMMON = {"model", "max_tokens", "temperature", "top_p", "stream", "stop", "seed", "n", "user", "stream_options",
           "max_completion_tokens", "presence_penalty", "frequency_penalty", "logprobs", "echo"}


def _common(data: dict, limits: Limits, models: set[str]) -> dict:
    model = data.get("model")
    if not isinstance(model, str):
        raise RequestError(400, "'model' is required (a string); GET /v1/models lists them", "model")
    if model not in models:
        raise RequestError(404, f"model {model!r} is not served here; available: {', '.join(sorted(models))}",
                           "model", kind="not_found_error")
    mt = data.get("max_completion_tokens", data.get("max_tokens"))
    if mt is not None and (isinstance(mt, bool) or not isinstance(mt, int)):
        raise RequestError(400, f"'max_tokens' must be an integer, got {mt!r}", "max_tokens")
    if mt is not None and mt < 1:
        raise RequestError(400, f"'max_tokens' must be >= 1, got {mt}", "max_tokens")
    if mt is not None and mt > limits.max_tokens:
        raise RequestError(400, f"'max_tokens' {mt} exceeds this server's limit of {limits.max_tokens}", "max_tokens")
    n = data.get("n", 1)
    if n != 1:
        raise RequestError(400, "only n=1 is supported", "n")
    for key in ("presence_penalty", "frequency_penalty"):
        if data.get(key) not in (None, 0, 0.0):
            raise RequestError(400, f"'{key}' is not supported (use 0)", key)
    stop = data.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > 4:
        raise RequestError(400, "'stop' must be a string or a list of up to 4 non-empty strings", "stop")
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError(400, "'stream' must be true or false", "stream")
    seed = data.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise RequestError(400, "'seed' must be an integer", "seed")
    return {"model": model, "max_tokens": mt if mt is not None else min(16, limits.max_tokens),
            "temperature": float(_number(data, "temperature", 1.0, 0.0, 2.0)),
            "top_p": float(_number(data, "top_p", 1.0, 1e-6, 1.0)), "stream": stream, "stop": stop, "seed": seed}


def parse_completion(body: bytes, limits: Limits, models: set[str]) -> GenerationRequest:
    data = _load(body, limits)
    prompt = data.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise RequestError(400, "'prompt' is required: one non-empty string", "prompt")
    if data.get("echo") or data.get("logprobs"):
        raise RequestError(400, "'echo' and 'logprobs' are not supported", "echo")
    return GenerationRequest(prompt=prompt, **_common(data, limits, models))


def parse_chat(body: bytes, limits: Limits, models: set[str]) -> GenerationRequest:
    data = _load(body, limits)
    msgs = data.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise RequestError(400, "'messages' is required: a non-empty list of {role, content}", "messages")
    for i, m in enumerate(msgs):
        if (not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant")
                or not isinstance(m.get("content"), str)):
            raise RequestError(400, f"messages[{i}] must be {{role: system|user|assistant, content: string}}",
                               f"messages[{i}]")
    if data.get("logprobs"):
        raise RequestError(400, "'logprobs' is not supported", "logprobs")
    return GenerationRequest(messages=[{"role": m["role"], "content": m["content"]} for m in msgs],
                             **_common(data, limits, models))


# ---- responses --------------------------------------------------------------------------------


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_body(req: GenerationRequest, text: str, finish: str, prompt_tokens: int, completion_tokens: int) -> dict:
    return {"id": f"cmpl-{req.request_id}", "object": "text_completion", "created": int(time.time()),
            "model": req.model, "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
            "usage": _usage(prompt_tokens, completion_tokens)}


def completion_chunk(req: GenerationRequest, text: str, finish: str | None) -> dict:
    return {"id": f"cmpl-{req.request_id}", "object": "text_completion", "created": int(time.time()),
            "model": req.model, "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}]}


def chat_body(req: GenerationRequest, text: str, finish: str, prompt_tokens: int, completion_tokens: int) -> dict:
    return {"id": f"chatcmpl-{req.request_id}", "object": "chat.completion", "created": int(time.time()),
            "model": req.model, "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                             "finish_reason": finish}],
            "usage": _usage(prompt_tokens, completion_tokens)}


def chat_chunk(req: GenerationRequest, delta: dict, finish: str | None) -> dict:
    return {"id": f"chatcmpl-{req.request_id}", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": req.model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def models_body(model_id: str, info: dict[str, Any]) -> dict:
    return {"object": "list", "data": [{"id": model_id, "object": "model", "owned_by": "oscar-cluster", **info}]}
