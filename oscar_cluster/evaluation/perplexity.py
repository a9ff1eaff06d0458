"""Perplexity through a codec's cache, sliding window (wikitext-2 test in the eval issue).

Windows of `window` tokens start every `stride` tokens; each scores only its tokens not scored by
the previous window (so every token is scored once, with at least window - stride tokens of
context after the first window). Inside a window the tokens are fed in chunks of `chunk` through
`OscarCache(codec, prefill)`: with prefill="chunked" each chunk attends to the earlier chunks
through the codec (the serving-faithful protocol).
"""

from __future__ import annotations

import math

import torch

from ..cache import OscarCache
from ..errors import ConfigError

__all__ = ["perplexity"]


@torch.inference_mode()
def perplexity(model, ids: torch.Tensor, codec, window: int = 2048, stride: int = 1024, chunk: int = 512,
               prefill: str = "chunked", max_windows: int | None = None) -> dict:
    """ids: [T] token ids -> {"ppl", "nll", "tokens", "windows"}."""
    if not 0 < stride <= window or chunk <= 0:
        raise ConfigError(f"need 0 < stride <= window and chunk > 0, got window {window}, stride {stride}, chunk {chunk}")
    ids = ids.reshape(-1)
    T = int(ids.numel())
    if T < 2:
        raise ConfigError("perplexity needs at least 2 tokens of text")
    dev = next(model.parameters()).device
    nll, n, windows, scored_to = 0.0, 0, 0, 0
    for begin in range(0, max(T - 1, 1), stride):
        end = min(begin + window, T)
        x = ids[begin:end].to(dev)[None]
        cache = OscarCache(codec, prefill=prefill)
        first_target = max(scored_to, begin + 1)  # position of the first token this window scores
        for s in range(0, x.shape[1], chunk):
            part = x[:, s:s + chunk]
            pos = torch.arange(begin + s, begin + s + part.shape[1], device=dev)[None] - begin
            logits = model(input_ids=part, position_ids=pos, past_key_values=cache, use_cache=True).logits[0].float()
            # logits at absolute position p predict token p + 1
            p = torch.arange(begin + s, begin + s + part.shape[1], device=dev)
            keep = (p + 1 >= first_target) & (p + 1 < end)
            if bool(keep.any()):
                tgt = ids.to(dev)[(p + 1)[keep]]
                nll += float(torch.nn.functional.cross_entropy(logits[keep], tgt, reduction="sum"))
                n += int(keep.sum())
        scored_to = end
        windows += 1
        if end >= T or (max_windows is not None and windows >= max_windows):
            break
    return {"ppl": math.exp(nll / n), "nll": nll / n, "tokens": n, "windows": windows}
