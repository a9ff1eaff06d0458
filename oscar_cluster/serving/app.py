"""Ray Serve applications behind one config schema (`config.py`).

- transformers engine: `TransformersServer`, a Serve deployment with a FastAPI ingress mounting the
  `OpenAIHandler` routes; `app_builder(args)` is its import path for Serve configs.
- vllm engine: a `ray.serve.llm` LLMConfig with the OSCAR attention backend (`attention_backend:
  CUSTOM`, the plugin enabled through `runtime_env`), TP in a STRICT_PACK placement group, and
  autoscaling with both `target_ongoing_requests` and `max_ongoing_requests` set.

`serve_config(cfg)` is the resolved Ray Serve config (`ServeDeploySchema`) that `oscar-serve
--dry-run` prints and that a RayService embeds.
"""

# (no `from __future__ import annotations`: FastAPI must see the real `Request` type on the routes)

import dataclasses
from typing import Any

from fastapi import FastAPI
from ray import serve
from starlette.requests import Request

from ..errors import ConfigError
from .config import ServeConfig, parse_serve_config
from .handler import OpenAIHandler
from .protocol import CHAT_BODY, COMPLETION_BODY, openapi_body

__all__ = ["TransformersServer", "app_builder", "serve_config", "deployment_options", "TRANSFORMERS_IMPORT_PATH"]

TRANSFORMERS_IMPORT_PATH = "oscar_cluster.serving.app:app_builder"
VLLM_IMPORT_PATH = "ray.serve.llm:build_openai_app"
DEPLOYMENT_NAME = "oscar-transformers"

api = FastAPI(title="oscar-serve")


@serve.deployment(name=DEPLOYMENT_NAME)
@serve.ingress(api)
class TransformersServer:
    """One replica: the model, its codec and its metrics."""

    def __init__(self, config: dict):
        self.handler = OpenAIHandler(parse_serve_config(config))

    @api.post("/v1/completions", openapi_extra=openapi_body(COMPLETION_BODY))
    async def completions(self, request: Request):
        return await self.handler.completions(request)

    @api.post("/v1/chat/completions", openapi_extra=openapi_body(CHAT_BODY))
    async def chat_completions(self, request: Request):
        return await self.handler.chat_completions(request)

    @api.get("/v1/models")
    async def list_models(self, request: Request):
        return await self.handler.list_models(request)

    @api.get("/health")
    async def health(self, request: Request):
        return await self.handler.health(request)

    @api.get("/metrics")
    async def metrics(self, request: Request):
        return await self.handler.metrics_text(request)


def _plain(cfg: ServeConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def deployment_options(cfg: ServeConfig) -> dict[str, Any]:
    a, m = cfg.model.autoscaling, cfg.model
    asc = {"min_replicas": a.min_replicas, "max_replicas": a.max_replicas,
           "target_ongoing_requests": a.target_ongoing_requests,
           "upscale_delay_s": a.upscale_delay_s, "downscale_delay_s": a.downscale_delay_s}
    if a.initial_replicas is not None:
        asc["initial_replicas"] = a.initial_replicas
    return {"autoscaling_config": asc, "max_ongoing_requests": a.max_ongoing_requests,
            "ray_actor_options": {"num_cpus": m.num_cpus, "num_gpus": m.num_gpus}}


def app_builder(args: dict):
    """Serve's application builder: `args = {"config": <ServeConfig as plain data>}`."""
    if not isinstance(args, dict) or "config" not in args:
        raise ConfigError("app_builder needs args: {config: ...} (write it with oscar-serve --dry-run)")
    cfg = parse_serve_config(args["config"])
    if cfg.engine != "transformers":
        raise ConfigError("app_builder serves the transformers engine; the vllm engine uses ray.serve.llm")
    return TransformersServer.options(**deployment_options(cfg)).bind(_plain(cfg))


def _llm_config(cfg: ServeConfig) -> dict[str, Any]:
    m = cfg.model
    a = m.autoscaling
    engine = {"tensor_parallel_size": m.tensor_parallel_size, "pipeline_parallel_size": m.pipeline_parallel_size,
              "attention_backend": "CUSTOM", "gpu_memory_utilization": m.gpu_memory_utilization,
              "max_model_len": m.max_model_len or m.limits.max_context, **m.engine_kwargs}
    asc = {"min_replicas": a.min_replicas, "max_replicas": a.max_replicas,
           "target_ongoing_requests": a.target_ongoing_requests}
    if a.initial_replicas is not None:
        asc["initial_replicas"] = a.initial_replicas
    env = {"VLLM_PLUGINS": "oscar"}
    if m.artifact:
        env["OSCAR_ARTIFACT"] = m.artifact
    return {
        "model_loading_config": {"model_id": m.model_id, "model_source": m.name},
        "accelerator_type": m.accelerator_type,
        "engine_kwargs": engine,
        "deployment_config": {"autoscaling_config": asc, "max_ongoing_requests": a.max_ongoing_requests},
        "placement_group_config": {"bundles": [{"GPU": 1} for _ in range(m.tensor_parallel_size * m.pipeline_parallel_size)],
                                   "strategy": "STRICT_PACK" if m.pipeline_parallel_size == 1 else "PACK"},
        "runtime_env": {"env_vars": env},
    }


def serve_config(cfg: ServeConfig) -> dict[str, Any]:
    """The Ray Serve config (`ServeDeploySchema`) for `cfg`."""
    http = {"host": cfg.http.host, "port": cfg.http.port}
    if cfg.engine == "transformers":
        app = {"name": cfg.app_name, "route_prefix": "/", "import_path": TRANSFORMERS_IMPORT_PATH,
               "args": {"config": _plain(cfg)},
               "deployments": [{"name": DEPLOYMENT_NAME, **deployment_options(cfg)}]}
    else:
        app = {"name": cfg.app_name, "route_prefix": "/", "import_path": VLLM_IMPORT_PATH,
               "args": {"llm_configs": [_llm_config(cfg)]}}
    return {"http_options": http, "applications": [app]}
