"""The transformers engine: one model, one request at a time, KV cache through a codec (`OscarCache`).

`TransformersEngine.generate(ids, req, on_step)` runs chunked prefill and the decode loop, yielding
`Step`s (new text, token count, finish reason) as tokens arrive; `on_step` sees the cache after every
step (for the KV-in-use gauges). Greedy at temperature 0, else temperature and top-p sampling with
the request's seed.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from .. import codecs
from ..cache import OscarCache
from ..errors import ConfigError
from .config import ModelServe
from .protocol import GenerationRequest, RequestError

__all__ = ["TransformersEngine", "Step"]


@dataclass
class Step:
    text: str  # new text since the previous step
    tokens: int  # tokens generated so far
    finish: str | None  # "stop" | "length" | None


class TransformersEngine:
    def __init__(self, cfg: ModelServe):
        from ..models import fingerprint, load

        self.cfg = cfg
        self.model, self.tokenizer = load(cfg.name, device=cfg.device)
        fp = fingerprint(self.model)
        self.num_layers, self.kv_heads, self.head_dim = fp["num_layers"], fp["num_kv_heads"], fp["head_dim"]
        if cfg.codec == "oscar":
            from ..artifact import load_artifact

            self.codec = load_artifact(cfg.artifact, model=self.model)
        else:
            self.codec = codecs.get(cfg.codec, head_dim=self.head_dim)
            if not self.codec.fitted:
                raise ConfigError(f"model.codec: {cfg.codec!r} needs calibration; use codec: oscar with an artifact")
        self.eos = self.tokenizer.eos_token_id
        self._lock = threading.Lock()  # one generation at a time per replica

    # ---- prompts ---------------------------------------------------------------------------
    def prompt_ids(self, req: GenerationRequest) -> list[int]:
        if req.messages is not None:
            if not getattr(self.tokenizer, "chat_template", None):
                raise RequestError(400, f"model {req.model!r} has no chat template; use /v1/completions", "messages")
            ids = self.tokenizer.apply_chat_template(req.messages, add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "input_ids"):
                ids = ids["input_ids"]
            ids = list(ids)
        else:
            ids = self.tokenizer(req.prompt, add_special_tokens=True)["input_ids"]
        lim = self.cfg.limits
        if len(ids) + req.max_tokens > lim.max_context:
            raise RequestError(400, f"prompt of {len(ids)} tokens + max_tokens {req.max_tokens} exceeds the context "
                                    f"limit of {lim.max_context} tokens; shorten the prompt or lower max_tokens",
                               "messages" if req.messages is not None else "prompt")
        return ids

    def kv_bytes_bf16(self, tokens: int) -> int:
        return tokens * self.num_layers * self.kv_heads * self.head_dim * 2 * 2

    # ---- generation ------------------------------------------------------------------------
    def _next(self, logits: torch.Tensor, req: GenerationRequest, gen: torch.Generator | None) -> int:
        if req.temperature == 0.0:
            return int(logits.argmax())
        probs = torch.softmax(logits.float() / req.temperature, dim=-1)
        if req.top_p < 1.0:
            p, idx = probs.sort(descending=True)
            keep = p.cumsum(0) - p < req.top_p
            probs = torch.zeros_like(probs).scatter_(0, idx[keep], p[keep])
        return int(torch.multinomial(probs / probs.sum(), 1, generator=gen))

    @torch.inference_mode()
    def generate(self, ids: list[int], req: GenerationRequest,
                 on_step: Callable[[OscarCache], None] | None = None) -> Iterator[Step]:
        with self._lock:
            yield from self._generate(ids, req, on_step)

    def _generate(self, ids, req, on_step):
        dev = next(self.model.parameters()).device
        gen = torch.Generator().manual_seed(req.seed) if req.seed is not None else None
        cache = OscarCache(self.codec, prefill=self.cfg.prefill)
        x = torch.tensor([ids], device=dev)
        T = x.shape[1]
        step = self.cfg.prefill_chunk
        logits = None
        for s in range(0, T, step):
            pos = torch.arange(s, min(T, s + step), device=dev)[None]
            logits = self.model(input_ids=x[:, s:s + step], position_ids=pos, past_key_values=cache,
                                use_cache=True).logits[0, -1]
        out: list[int] = []
        sent = ""
        for i in range(req.max_tokens):
            tok = self._next(logits, req, gen)
            if on_step is not None:
                on_step(cache)
            if tok == self.eos:
                yield Step("", len(out), "stop")
                return
            out.append(tok)
            text = self.tokenizer.decode(out, skip_special_tokens=True)
            cut = min((text.find(s) for s in req.stop if s in text), default=-1)
            if cut >= 0:
                yield Step(text[len(sent):cut] if cut > len(sent) else "", len(out), "stop")
                return
            # hold back an incomplete UTF-8 character (shown as U+FFFD) until the next token
            delta = text[len(sent):] if not text.endswith("\ufffd") else ""
            sent += delta
            last = i == req.max_tokens - 1
            yield Step(delta, len(out), "length" if last else None)
            if last:
                return
            pos = torch.tensor([[T + i]], device=dev)
            logits = self.model(input_ids=torch.tensor([[tok]], device=dev), position_ids=pos,
                                past_key_values=cache, use_cache=True).logits[0, -1]
