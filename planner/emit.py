"""Deployable files for a plan: a Ray Serve config (`serve-config`) for the OSCAR INT2 option.

The config is a `ServeDeploySchema` document: one application built by
`ray.serve.llm:build_openai_app` with one LLMConfig (tensor x pipeline parallel vLLM engine with
`attention_backend: CUSTOM`, the OSCAR plugin enabled through `runtime_env`, autoscaling with both
`target_ongoing_requests` and `max_ongoing_requests` set: Ray's LLM builder defaults them to 1e9,
which never scales). `check_serve_config` checks the structure without Ray;
`validate_with_ray` runs Ray's own schema and needs `ray[serve]`. KubeRay manifests
(`rayservice`, `rayjob`, `kustomize-overlay`) come from `k8s.py` and the templates in deploy/k8s/base.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from oscar_cluster.errors import ConfigError

from .plan import Plan
from .specs import KVFormat, WeightFormat

__all__ = ["EMIT_KINDS", "IMPORT_PATH", "serve_config", "check_serve_config", "validate_with_ray", "write_atomic",
           "emit"]

EMIT_KINDS = ("serve-config", "rayservice", "rayjob", "kustomize-overlay")
IMPORT_PATH = "ray.serve.llm:build_openai_app"
APP_NAME = "oscar-llm"
PLUGIN = "oscar"  # VLLM_PLUGINS allow-list entry of the OSCAR vLLM plugin
RAY_ACCELERATORS = ("V100", "T4", "A10G", "L4", "L40S", "A100", "A100-40G", "A100-80G", "H100", "H200", "H20", "B200")
_DEPLOY_KEYS = {"proxy_location", "http_options", "grpc_options", "logging_config", "applications", "target_capacity"}
_APP_KEYS = {"name", "route_prefix", "import_path", "runtime_env", "deployments", "args", "logging_config",
             "external_scaler_enabled", "autoscaling_policy"}
_LLM_KEYS = {"model_loading_config", "engine_kwargs", "accelerator_type", "accelerator_config",
             "placement_group_config", "deployment_config", "lora_config", "runtime_env", "llm_engine", "server_cls",
             "experimental_configs", "log_engine_metrics", "callback_config"}


def serve_config(p: Plan) -> dict[str, Any]:
    """The Ray Serve config for `p`'s oscar-int2 option."""
    r, m, g = p.request, p.request.model, p.request.gpu
    if KVFormat.OSCAR_INT2 not in r.kv_formats:
        raise ConfigError("serve-config is written for the oscar-int2 plan; include oscar-int2 in --kv")
    o = p.option(KVFormat.OSCAR_INT2)
    s = o.shape
    if s is None:
        raise ConfigError(f"no oscar-int2 shape holds one sequence of {r.ctx} tokens on {g.name}; nothing to emit")
    if not o.fits:
        raise ConfigError(f"the oscar-int2 plan needs {s.gpus} GPUs > --gpus {r.max_gpus}; nothing to emit "
                          f"(drop --gpus or shrink --batch / --ctx)")
    engine = {"tensor_parallel_size": s.tp, "pipeline_parallel_size": s.pp, "max_model_len": r.ctx,
              "max_num_seqs": s.seqs, "gpu_memory_utilization": r.gpu_mem_util, "attention_backend": "CUSTOM"}
    if r.weights is WeightFormat.FP8:
        engine["quantization"] = "fp8"
    llm = {
        "model_loading_config": {"model_id": m.name, "model_source": m.hf_id or m.name},
        "accelerator_type": g.ray_accelerator_type,
        "engine_kwargs": engine,
        "deployment_config": {
            "autoscaling_config": {"min_replicas": 1, "initial_replicas": s.replicas, "max_replicas": s.replicas,
                                   "target_ongoing_requests": s.seqs},
            "max_ongoing_requests": s.seqs,
        },
        "placement_group_config": {"bundles": [{"GPU": 1} for _ in range(s.tp * s.pp)],
                                   "strategy": "STRICT_PACK" if s.pp == 1 else "PACK"},
        "runtime_env": {"env_vars": {"VLLM_PLUGINS": PLUGIN}},
    }
    return {"applications": [{"name": APP_NAME, "route_prefix": "/", "import_path": IMPORT_PATH,
                              "args": {"llm_configs": [llm]}}]}


def _need(cond: bool, what: str) -> None:
    if not cond:
        raise ConfigError(f"serve config: {what}")


def _pos_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x > 0


def check_serve_config(cfg: Any) -> None:
    """Structure of a ServeDeploySchema document with ray.serve.llm LLMConfigs, checked without Ray."""
    _need(isinstance(cfg, dict), "top level must be a mapping")
    _need(not set(cfg) - _DEPLOY_KEYS, f"unknown top-level key(s) {sorted(set(cfg) - _DEPLOY_KEYS)}")
    apps = cfg.get("applications")
    _need(isinstance(apps, list) and apps, "applications must be a non-empty list")
    names = [a.get("name") for a in apps if isinstance(a, dict)]
    _need(len(names) == len(apps) and all(isinstance(n, str) and n for n in names), "every application needs a name")
    _need(len(set(names)) == len(names), f"application names repeat: {names}")
    for app in apps:
        _need(not set(app) - _APP_KEYS, f"application {app['name']!r}: unknown key(s) {sorted(set(app) - _APP_KEYS)}")
        ip = app.get("import_path")
        _need(isinstance(ip, str) and ip.count(":") == 1 and not ip.startswith(":") and not ip.endswith(":"),
              f"application {app['name']!r}: import_path must be 'module:attribute', got {ip!r}")
        _need(str(app.get("route_prefix", "/")).startswith("/"), "route_prefix must start with '/'")
        _need(isinstance(app.get("args", {}), dict) and isinstance(app.get("runtime_env", {}), dict),
              "args and runtime_env must be mappings")
        if ip == IMPORT_PATH:
            _check_llm_configs(app.get("args", {}).get("llm_configs"))


def _check_llm_configs(llms: Any) -> None:
    _need(isinstance(llms, list) and llms, "args.llm_configs must be a non-empty list")
    for llm in llms:
        _need(isinstance(llm, dict) and not set(llm) - _LLM_KEYS,
              f"llm_config: unknown key(s) {sorted(set(llm) - _LLM_KEYS) if isinstance(llm, dict) else llm}")
        mlc = llm.get("model_loading_config")
        _need(isinstance(mlc, dict) and isinstance(mlc.get("model_id"), str), "model_loading_config.model_id is required")
        ek = llm.get("engine_kwargs", {})
        tp, pp = ek.get("tensor_parallel_size", 1), ek.get("pipeline_parallel_size", 1)
        _need(_pos_int(tp) and _pos_int(pp), f"tensor/pipeline_parallel_size must be positive ints, got {tp}, {pp}")
        _need(_pos_int(ek.get("max_model_len")), "engine_kwargs.max_model_len must be a positive int")
        _need(ek.get("attention_backend") == "CUSTOM", "engine_kwargs.attention_backend must be CUSTOM (OSCAR)")
        _need(llm.get("accelerator_type") in RAY_ACCELERATORS,
              f"accelerator_type {llm.get('accelerator_type')!r} is not a Ray label ({', '.join(RAY_ACCELERATORS)})")
        dc = llm.get("deployment_config", {})
        asc = dc.get("autoscaling_config")
        _need(isinstance(asc, dict), "deployment_config.autoscaling_config is required")
        lo, hi, init = asc.get("min_replicas"), asc.get("max_replicas"), asc.get("initial_replicas", asc.get("min_replicas"))
        _need(all(isinstance(x, int) and x >= 0 for x in (lo, hi, init)) and lo <= init <= hi and hi >= 1,
              f"need 0 <= min_replicas <= initial_replicas <= max_replicas, got {lo}, {init}, {hi}")
        _need(isinstance(asc.get("target_ongoing_requests"), (int, float)) and asc["target_ongoing_requests"] > 0,
              "autoscaling_config.target_ongoing_requests must be set (the LLM builder's default 1e9 never scales)")
        _need(_pos_int(dc.get("max_ongoing_requests")), "deployment_config.max_ongoing_requests must be set")
        pg = llm.get("placement_group_config")
        if pg is not None:
            _need(isinstance(pg.get("bundles"), list) and len(pg["bundles"]) == tp * pp,
                  f"placement_group_config needs tp x pp = {tp * pp} bundles")
            _need(pg.get("strategy", "PACK") in ("PACK", "STRICT_PACK", "SPREAD", "STRICT_SPREAD"), "bad strategy")
        env = (llm.get("runtime_env") or {}).get("env_vars", {})
        _need(isinstance(env, dict) and all(isinstance(v, str) for v in env.values()), "env_vars values must be strings")
        _need(PLUGIN in str(env.get("VLLM_PLUGINS", "")).split(","), f"runtime_env env_vars.VLLM_PLUGINS must allow {PLUGIN!r}")


def validate_with_ray(cfg: dict[str, Any]) -> None:
    """Ray's own `ServeDeploySchema` (needs `pip install "ray[serve]"`)."""
    try:
        from ray.serve.schema import ServeDeploySchema
    except ImportError:
        raise ConfigError("validating against Ray's ServeDeploySchema needs Ray: pip install \"ray[serve]\"") from None
    try:
        (getattr(ServeDeploySchema, "model_validate", None) or ServeDeploySchema.parse_obj)(cfg)
    except Exception as e:  # pydantic's ValidationError, whichever major version Ray bundles
        raise ConfigError(f"Ray's ServeDeploySchema rejects the config: {' '.join(str(e).split())}") from None


def write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file in the same directory and rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def emit(kind: str, p: Plan, out_dir: str | Path, command: str = "oscar-plan") -> tuple[Path, str]:
    """Write `kind` for plan `p` under `out_dir`; returns (path, how it was validated)."""
    if kind in ("rayservice", "rayjob"):
        from .k8s import emit_manifest

        return emit_manifest(kind, p, out_dir, command=command)
    if kind == "kustomize-overlay":
        from .k8s import write_overlay

        paths = write_overlay(p, out_dir, command=command)
        return paths[0], "overlay of deploy/k8s/base; build it with kustomize or oscar_cluster.planner.k8s.render"
    if kind not in EMIT_KINDS:
        raise ConfigError(f"--emit {kind!r}: choose from {', '.join(EMIT_KINDS)}")
    cfg = serve_config(p)
    check_serve_config(cfg)
    how = "structure checked; Ray not installed, ServeDeploySchema not run"
    if importlib.util.find_spec("ray") is not None:
        validate_with_ray(cfg)
        how = "structure checked and validated with Ray's ServeDeploySchema"
    o = p.option(KVFormat.OSCAR_INT2)
    s, r = o.shape, p.request
    head = [f"# Ray Serve config written by: {command}",
            f"# plan: {r.model.name}, ctx {r.ctx} x batch {r.batch}, oscar-int2 KV, weights {r.weights.value}: "
            f"TP {s.tp} x PP {s.pp} x {s.replicas} replica(s) = {s.gpus} x {r.gpu.name}, "
            f"${o.cost.usd_per_hour:,.2f}/h, ~{o.cost.tokens_per_s:,.0f} tok/s (roofline)",
            "# deploy: serve deploy serve-config.yaml   (needs the OSCAR calibration artifact for this model)"]
    if r.weights is WeightFormat.INT4:
        head.append("# --weights int4: point model_source at an int4 (AWQ/GPTQ) checkpoint")
    if r.ctx > r.model.max_context:
        head.append(f"# max_model_len {r.ctx} exceeds the model's {r.model.max_context} positions: add rope scaling")
    path = Path(out_dir) / "serve-config.yaml"
    write_atomic(path, "\n".join(head) + "\n" + yaml.safe_dump(cfg, sort_keys=False))
    return path, how
