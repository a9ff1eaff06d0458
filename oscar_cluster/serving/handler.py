"""The OpenAI-compatible endpoints' logic, independent of how they are mounted (Ray Serve or a
plain FastAPI app): request validation, limits, streaming (SSE), metrics and error JSON.

Generation runs in a worker thread (the model is CPU/GPU bound); streamed chunks cross to the
event loop through a queue. Every client error is a 4xx with the OpenAI error body; an engine
failure is a 500 with the same shape and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from typing import AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from .config import ServeConfig
from .engine import TransformersEngine
from .metrics import CONTENT_TYPE_LATEST, ServeMetrics
from .protocol import (CHAT_BODY, COMPLETION_BODY, GenerationRequest, RequestError, openapi_body, chat_body, chat_chunk, completion_body, completion_chunk,
                       error_body, models_body, parse_chat, parse_completion)

__all__ = ["OpenAIHandler"]

log = logging.getLogger(__name__)


def _err(e: RequestError) -> JSONResponse:
    return JSONResponse(error_body(e), status_code=e.status)


class OpenAIHandler:
    def __init__(self, cfg: ServeConfig, engine: TransformersEngine | None = None):
        self.cfg = cfg
        m = cfg.model
        self.engine = engine if engine is not None else TransformersEngine(m)
        self.models = {m.model_id}
        self.metrics = ServeMetrics(m.model_id, m.codec)
        e = self.engine
        ctx = m.limits.max_context
        bpe = e.codec.bits_per_element(ctx)
        per_token = e.codec.kv_bytes_per_token(ctx, e.num_layers, e.kv_heads)
        bf16_per_token = e.kv_bytes_bf16(1)
        self.metrics.bits_per_element.set(bpe)
        self.metrics.kv_bytes_per_token.set(per_token)
        self.metrics.compression_ratio.set(bf16_per_token / per_token)
        self.metrics.capacity_tokens.set(2**30 / per_token)
        self.metrics.bf16_capacity_tokens.set(2**30 / bf16_per_token)
        self.info = {"codec": m.codec, "bits_per_element": round(bpe, 4), "kv_bytes_per_token": round(per_token, 1),
                     "max_context": ctx, "max_tokens": m.limits.max_tokens}
        self._token = os.environ.get(cfg.auth_token_env) if cfg.auth_token_env else None
        if cfg.auth_token_env and not self._token:
            from ..errors import ConfigError

            raise ConfigError(f"auth_token_env: environment variable {cfg.auth_token_env} is empty or unset")

    # ---- plumbing ------------------------------------------------------------------------------
    def _authorized(self, request: Request) -> bool:
        if self._token is None:
            return True
        import hmac

        got = request.headers.get("authorization", "")
        return hmac.compare_digest(got.encode(), f"Bearer {self._token}".encode())

    async def _body(self, request: Request) -> bytes:
        limit = self.cfg.model.limits.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise RequestError(413, f"request body of {declared} bytes exceeds the limit of {limit}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestError(413, f"request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def _on_step(self, tokens_before: int):
        def update(cache) -> None:
            used = cache.stored_bytes()
            n = cache.get_seq_length()
            self.metrics.kv_bytes_in_use.set(used)
            self.metrics.kv_bytes_saved.set(max(0, self.engine.kv_bytes_bf16(n) - used))
        return update

    def _stream_thread(self, ids: list[int], req: GenerationRequest, loop, queue: asyncio.Queue, cancel: threading.Event):
        try:
            for step in self.engine.generate(ids, req, self._on_step(len(ids))):
                loop.call_soon_threadsafe(queue.put_nowait, step)
                if cancel.is_set():
                    break
        except Exception as e:  # surfaced to the request as a 500
            log.exception("generation failed")
            loop.call_soon_threadsafe(queue.put_nowait, e)
        finally:
            self.metrics.kv_bytes_in_use.set(0)
            self.metrics.kv_bytes_saved.set(0)
            loop.call_soon_threadsafe(queue.put_nowait, None)

    async def _steps(self, ids: list[int], req: GenerationRequest) -> AsyncIterator:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()
        thread = threading.Thread(target=self._stream_thread, args=(ids, req, loop, queue, cancel), daemon=True)
        thread.start()
        deadline = loop.time() + self.cfg.model.limits.request_timeout_s
        try:
            while True:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    raise RequestError(504, f"request exceeded the {self.cfg.model.limits.request_timeout_s} s timeout",
                                       kind="timeout")
                try:
                    item = await asyncio.wait_for(queue.get(), timeout)
                except asyncio.TimeoutError:
                    continue
                if item is None:
                    return
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            cancel.set()

    # ---- endpoints -----------------------------------------------------------------------------
    async def completions(self, request: Request) -> Response:
        return await self._generate(request, chat=False)

    async def chat_completions(self, request: Request) -> Response:
        return await self._generate(request, chat=True)

    async def _generate(self, request: Request, chat: bool) -> Response:
        t0 = time.perf_counter()
        if not self._authorized(request):
            self.metrics.finished("401")
            return _err(RequestError(401, "missing or wrong bearer token", kind="authentication_error"))
        try:
            body = await self._body(request)
            lim = self.cfg.model.limits
            req = (parse_chat if chat else parse_completion)(body, lim, self.models)
            ids = self.engine.prompt_ids(req)
        except RequestError as e:
            self.metrics.finished(str(e.status))
            return _err(e)
        self.metrics.prompt_tokens.inc(len(ids))
        if req.stream:
            return StreamingResponse(self._sse(ids, req, chat, t0), media_type="text/event-stream")
        return await self._whole(ids, req, chat, t0)

    def _timed(self, t0: float):
        state = {"last": None, "n": 0}

        def mark(step) -> None:
            now = time.perf_counter()
            if step.tokens > state["n"]:
                if state["last"] is None:
                    self.metrics.ttft.observe(now - t0)
                else:
                    self.metrics.itl.observe(now - state["last"])
                self.metrics.generation_tokens.inc(step.tokens - state["n"])
                state["last"], state["n"] = now, step.tokens
        return mark

    async def _whole(self, ids, req, chat, t0) -> Response:
        mark = self._timed(t0)
        text, finish, n = [], "length", 0
        self.metrics.running.inc()
        try:
            async for step in self._steps(ids, req):
                mark(step)
                text.append(step.text)
                n = step.tokens
                finish = step.finish or finish
        except RequestError as e:
            self.metrics.finished(str(e.status))
            return _err(e)
        except Exception as e:
            self.metrics.finished("500")
            return _err(RequestError(500, f"generation failed: {type(e).__name__}", kind="server_error"))
        finally:
            self.metrics.running.dec()
        self.metrics.e2e.observe(time.perf_counter() - t0)
        self.metrics.finished("200")
        body = (chat_body if chat else completion_body)(req, "".join(text), finish, len(ids), n)
        return JSONResponse(body)

    async def _sse(self, ids, req, chat, t0) -> AsyncIterator[bytes]:
        mark = self._timed(t0)
        status = "200"
        self.metrics.running.inc()
        try:
            if chat:
                yield _event(chat_chunk(req, {"role": "assistant", "content": ""}, None))
            async for step in self._steps(ids, req):
                mark(step)
                if step.text or step.finish:
                    yield _event(chat_chunk(req, {"content": step.text} if step.text else {}, step.finish) if chat
                                 else completion_chunk(req, step.text, step.finish))
            yield b"data: [DONE]\n\n"
        except RequestError as e:
            status = str(e.status)
            yield _event(error_body(e))
        except Exception as e:
            status = "500"
            yield _event(error_body(RequestError(500, f"generation failed: {type(e).__name__}", kind="server_error")))
        finally:
            self.metrics.running.dec()
            self.metrics.e2e.observe(time.perf_counter() - t0)
            self.metrics.finished(status)

    async def list_models(self, request: Request) -> Response:
        return JSONResponse(models_body(self.cfg.model.model_id, self.info))

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": self.cfg.model.model_id, **self.info})

    async def metrics_text(self, request: Request) -> Response:
        return Response(self.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


def _event(obj: dict) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()


def build_api(handler: OpenAIHandler):
    """A FastAPI app with the routes bound to `handler` (tests and single-process serving)."""
    from fastapi import FastAPI

    api = FastAPI(title="oscar-serve", openapi_url="/openapi.json")
    api.add_api_route("/v1/completions", handler.completions, methods=["POST"],
                      openapi_extra=openapi_body(COMPLETION_BODY))
    api.add_api_route("/v1/chat/completions", handler.chat_completions, methods=["POST"],
                      openapi_extra=openapi_body(CHAT_BODY))
    api.add_api_route("/v1/models", handler.list_models, methods=["GET"])
    api.add_api_route("/health", handler.health, methods=["GET"])
    api.add_api_route("/metrics", handler.metrics_text, methods=["GET"])
    return api
