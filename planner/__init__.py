"""Capacity and cost planner (`oscar-plan`, installed as `oscar_cluster.planner`; DESIGN.md section 8).

`plan(PlanRequest(model, gpu, ctx, batch, ...)) -> Plan`: for bf16, fp8, int4 and OSCAR INT2 KV
caches, the weights / KV / overhead per GPU, the cheapest tensor x pipeline x replica shape that
holds the batch, decode tokens/s from the memory roofline, $/hour and $/1M output tokens. Pure
Python: imports neither Ray nor vLLM (OSCAR's bits per element come from the codec when it imports).

Modules: specs (dataclasses, enums), presets (YAML presets and catalog), hfconfig (config.json),
memory, parallel, perf (one pure function per figure), plan, render, emit (Ray Serve config), cli.
"""

from .plan import Option, Plan, min_gpus, plan
from .presets import find_gpu, find_model, load_gpus, load_models, resolve_model
from .specs import GPUSpec, KVFormat, ModelSpec, PlanRequest, WeightFormat, parse_tokens

__all__ = ["plan", "Plan", "Option", "min_gpus", "PlanRequest", "ModelSpec", "GPUSpec", "KVFormat", "WeightFormat",
           "parse_tokens", "find_model", "find_gpu", "resolve_model", "load_models", "load_gpus"]
