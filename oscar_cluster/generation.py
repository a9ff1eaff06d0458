"""Greedy generation with explicit chunked prefill (the serving-faithful protocol).

`greedy_generate` feeds the prompt in chunks of `prefill_chunk` tokens (each attends to the
earlier chunks through the cache) and then decodes one token at a time. With `DynamicCache` or
`OscarCache(bf16 codec)` it reproduces `model.generate(do_sample=False)`.
"""

from __future__ import annotations

import torch

__all__ = ["greedy_generate"]


@torch.inference_mode()
def greedy_generate(model, input_ids: torch.Tensor, cache, max_new_tokens: int,
                    prefill_chunk: int | None = None, eos_token_id: int | None = None) -> torch.Tensor:
    """input_ids: [T] or [1, T] long -> generated ids [n <= max_new_tokens] long (CPU)."""
    ids = input_ids.reshape(1, -1).to(next(model.parameters()).device)
    T = ids.shape[1]
    step = prefill_chunk or T
    logits = None
    for s in range(0, T, step):
        chunk = ids[:, s:s + step]
        pos = torch.arange(s, s + chunk.shape[1], device=ids.device)[None]
        logits = model(input_ids=chunk, position_ids=pos, past_key_values=cache, use_cache=True).logits
    out = []
    nxt = logits[:, -1].argmax(-1, keepdim=True)
    for i in range(max_new_tokens):
        out.append(int(nxt))
        if eos_token_id is not None and out[-1] == eos_token_id:
            break
        if i == max_new_tokens - 1:
            break
        pos = torch.tensor([[T + i]], device=ids.device)
        logits = model(input_ids=nxt, position_ids=pos, past_key_values=cache, use_cache=True).logits
        nxt = logits[:, -1].argmax(-1, keepdim=True)
    return torch.tensor(out, dtype=torch.long)
