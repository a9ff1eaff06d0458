"""Greedy generation with explicit chunked prefill (the serving-faithful protocol).

`greedy_generate` feeds the prompt in chunks of `prefill_chunk` tokens (each attends to the
earlier chunks through the cache) and then decodes one token at a time. With `DynamicCache` or
`OscarCache(bf16 codec)` it reproduces `model.generate(do_sample=False)`.
"""

from __future__ import annotations

import torch

__all__ = ["greedy_generate", "greedy_generate_batch"]


def _chunks(T: int, chunk: int | None, align: str) -> list[tuple[int, int]]:
    """[(start, end)] prefill chunks of a T-token prompt."""
    if align not in ("start", "end"):
        raise ValueError(f"chunk_align must be 'start' or 'end', got {align!r}")
    C = chunk or T
    if align == "start":
        return [(s, min(T, s + C)) for s in range(0, T, C)]
    ends = list(range(T, 0, -C))[::-1]
    return [(max(0, e - C), e) for e in ends]


@torch.inference_mode()
def greedy_generate(model, input_ids: torch.Tensor, cache, max_new_tokens: int,
                    prefill_chunk: int | None = None, eos_token_id: int | None = None,
                    chunk_align: str = "start") -> torch.Tensor:
    """input_ids: [T] or [1, T] long -> generated ids [n <= max_new_tokens] long (CPU).

    chunk_align: "start" (chunks at 0, C, 2C, ...) or "end" (the last chunk ends with the prompt,
    the first takes the remainder: the chunks `greedy_generate_batch` gives each item)."""
    ids = input_ids.reshape(1, -1).to(next(model.parameters()).device)
    T = ids.shape[1]
    logits = None
    for s, e in _chunks(T, prefill_chunk, chunk_align):
        chunk = ids[:, s:e]
        pos = torch.arange(s, e, device=ids.device)[None]
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


@torch.inference_mode()
def greedy_generate_batch(model, prompts: list[torch.Tensor], cache, max_new_tokens: int,
                          prefill_chunk: int | None = None, eos_token_id: int | None = None,
                          pad_token_id: int = 0, stop=None) -> tuple[list[list[int]], list[str]]:
    """Greedy decoding of several prompts at once, left-padded to the longest.

    prompts: B tensors [T_b] long; cache: an `OscarCache` (its left padding is set here); stop:
    optional `stop(b, ids) -> bool`, asked after each new token of item b (ids: its tokens so far).
    Prefill chunks are aligned to the end of the prompts (the last chunk ends with them), so item b
    sees exactly what `greedy_generate(..., chunk_align="end")` shows it alone: its pads are masked,
    its positions start at 0, its chunks are the same tokens, and its tokens are stored at the same
    positions (codecs without token groups store the pads too; they are never attended).
    Returns (generated ids per item, why each stopped: "eos" | "stop" | "budget"); an item's ids
    end at its stop (the EOS included)."""
    if not prompts or any(p.numel() == 0 for p in prompts):
        raise ValueError("greedy_generate_batch needs at least one non-empty prompt")
    if not hasattr(cache, "set_left_padding"):
        raise TypeError(f"greedy_generate_batch needs an OscarCache (left padding), got {type(cache).__name__}")
    dev = next(model.parameters()).device
    lens = [int(p.numel()) for p in prompts]
    B, T = len(prompts), max(lens)
    pads = [T - n for n in lens]
    ids = torch.full((B, T), pad_token_id, dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, pads[b]:] = p.reshape(-1)
    ids = ids.to(dev)
    pad_t = torch.tensor(pads, device=dev)[:, None]
    mask = (torch.arange(T, device=dev)[None] >= pad_t).long()  # [B, T], 0 on pads
    pos = (torch.arange(T, device=dev)[None] - pad_t).clamp_min(0)
    cache.set_left_padding(pads)
    logits = None
    for s, e in _chunks(T, prefill_chunk, "end"):
        logits = model(input_ids=ids[:, s:e], attention_mask=mask[:, :e], position_ids=pos[:, s:e],
                       past_key_values=cache, use_cache=True, logits_to_keep=1).logits
    out: list[list[int]] = [[] for _ in range(B)]
    why = ["budget"] * B
    live = list(range(B))
    nxt = logits[:, -1].argmax(-1)
    lens_t = torch.tensor(lens, device=dev)
    for i in range(max_new_tokens):
        toks = nxt.tolist()
        for b in list(live):
            out[b].append(toks[b])
            if eos_token_id is not None and toks[b] == eos_token_id:
                why[b] = "eos"
            elif stop is not None and stop(b, out[b]):
                why[b] = "stop"
            else:
                continue
            live.remove(b)
        if not live or i == max_new_tokens - 1:
            break
        mask = torch.cat([mask, mask.new_ones(B, 1)], dim=1)
        logits = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=(lens_t + i)[:, None],
                       past_key_values=cache, use_cache=True, logits_to_keep=1).logits
        nxt = logits[:, -1].argmax(-1)
    return out, why
