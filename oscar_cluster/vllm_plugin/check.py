"""Run plain vLLM or vLLM with the OSCAR backend on a few prompts; write what the engine reports.

    python -m oscar_cluster.vllm_plugin.check --model DIR --prompts prompts.json --artifact ART --out oscar.json
    python -m oscar_cluster.vllm_plugin.check --model DIR --prompts prompts.json --bf16 --out bf16.json

prompts.json: a list of prompts (strings or token-id lists), generated as one batch, or a list of
such lists, generated one batch after the other (a prompt alone gets exact chunked-prefill chunk
boundaries: --max-num-batched-tokens tokens each). The JSON written holds the engine's KV blocks
(num_gpu_blocks, block_size), greedy outputs (token ids and text per prompt) and, with OSCAR, the
`oscar:` gauges. `--bf16` leaves the plugin out (VLLM_PLUGINS without "oscar"); otherwise it is
allowed in. The artifact goes through vLLM's additional config (`--artifact`) or OSCAR_ARTIFACT.
vLLM spawns processes, so this runs as its own program (tests call it in a subprocess).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from ..cli_util import OneLineParser

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m oscar_cluster.vllm_plugin.check",
                      description="Greedy outputs and KV capacity of vLLM with or without the OSCAR backend.")
    p.add_argument("--model", required=True, help="model directory (config.json + safetensors)")
    p.add_argument("--prompts", required=True, help="JSON list of prompts (strings or token-id lists)")
    p.add_argument("--out", required=True, help="JSON file to write")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--artifact", default=None, help="OSCAR artifact (else OSCAR_ARTIFACT)")
    mode.add_argument("--bf16", action="store_true", help="plain vLLM: the OSCAR plugin is left out")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--logprobs", type=int, default=0, help="also record the top-N log-probabilities of every step")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--max-num-seqs", type=int, default=8)
    p.add_argument("--max-num-batched-tokens", type=int, default=None, help="token budget per step (chunked prefill)")
    p.add_argument("--kv-cache-memory-bytes", type=int, default=1 << 30)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--prefix-caching", action="store_true", help="enable vLLM's prefix caching (off by default)")
    return p


def _plugins_env(bf16: bool) -> None:
    """Allow or leave out the `oscar` general plugin (VLLM_PLUGINS is vLLM's allow-list)."""
    names = [n for n in os.environ.get("VLLM_PLUGINS", "").split(",") if n]
    if bf16:
        os.environ["VLLM_PLUGINS"] = ",".join(n for n in names if n != "oscar")
    elif "VLLM_PLUGINS" in os.environ and "oscar" not in names:
        os.environ["VLLM_PLUGINS"] = ",".join([*names, "oscar"])


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def run(args) -> dict:
    _plugins_env(args.bf16)
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    prompts = json.loads(Path(args.prompts).read_text())
    if not prompts or not all(isinstance(g, list) and g and not isinstance(g[0], int) for g in prompts):
        prompts = [prompts]  # one batch
    batches = [[TokensPrompt(prompt_token_ids=list(p)) if isinstance(p, list) else p for p in g] for g in prompts]
    extra = {"additional_config": {"oscar": {"artifact": args.artifact}}} if args.artifact else {}
    if args.max_num_batched_tokens:
        extra.update(max_num_batched_tokens=args.max_num_batched_tokens, enable_chunked_prefill=True)
    t0 = time.perf_counter()
    llm = LLM(model=args.model, dtype=args.dtype, enforce_eager=True, max_model_len=args.max_model_len,
              max_num_seqs=args.max_num_seqs, kv_cache_memory_bytes=args.kv_cache_memory_bytes,
              enable_prefix_caching=args.prefix_caching, seed=0, **extra)
    init_s = time.perf_counter() - t0
    cfg = llm.llm_engine.vllm_config
    t1 = time.perf_counter()
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0, ignore_eos=True,
                            logprobs=args.logprobs or None)
    outs = [o for batch in batches for o in llm.generate(batch, params, use_tqdm=False)]
    result = {
        "mode": "bf16" if args.bf16 else "oscar",
        "num_gpu_blocks": int(cfg.cache_config.num_gpu_blocks), "block_size": int(cfg.cache_config.block_size),
        "kv_cache_memory_bytes": args.kv_cache_memory_bytes, "init_s": round(init_s, 1),
        "generate_s": round(time.perf_counter() - t1, 1),
        "outputs": [{"prompt_token_ids": list(o.prompt_token_ids), "token_ids": list(o.outputs[0].token_ids),
                     "text": o.outputs[0].text, "num_cached_tokens": o.num_cached_tokens,
                     "logprobs": [{str(t): p.logprob for t, p in step.items()} for step in o.outputs[0].logprobs or []]}
                    for o in outs],
    }
    if not args.bf16:
        from prometheus_client import REGISTRY

        from .metrics import GAUGES, OscarStatLogger

        logger = OscarStatLogger(cfg)
        logger.log_engine_initialized()
        labels = {"model_name": str(cfg.model_config.served_model_name), "engine": "0"}
        result["metrics"] = {name: REGISTRY.get_sample_value(name, labels) for name in GAUGES}
    return result


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = run(args)
    _write_json(Path(args.out), result)
    print(json.dumps({k: v for k, v in result.items() if k != "outputs"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
