"""Triton kernels for the packed OSCAR KV cache (installed as `oscar_cluster.kernels`).

- `layout`: the slot layout of the paged cache and the per-layer tables the kernels read.
- `write_kv`: encode and store new K/V into the pages (reference: `write_kv_reference`).
- `attention`: decode (split-K) and chunked-prefill attention over the pages
  (reference: `paged_attention_reference`), and the same kernel over bf16 pages.
- `paged_cache`: a transformers `Cache` on the pages, attending through the kernels.
- `encoder`: `OscarCache`'s storage step on `write_kv` (the eval harness's fast path).
On CPU the kernels run under `TRITON_INTERPRET=1` (tests); on CUDA they compile.
"""

if __package__ == "oscar_cluster.kernels":
    from .attention import (decode_attention, paged_attention, paged_attention_bf16,
                            paged_attention_bf16_reference, paged_attention_reference, prefill_attention)
    from .encoder import KernelEncoder
    from .layout import LayerTables, layer_tables, shard_tables, slot_bytes_for
    from .write_kv import write_kv, write_kv_reference

    __all__ = ["KernelEncoder", "LayerTables", "layer_tables", "shard_tables", "slot_bytes_for", "write_kv", "write_kv_reference", "paged_attention",
               "decode_attention", "prefill_attention", "paged_attention_bf16", "paged_attention_reference",
               "paged_attention_bf16_reference"]
# Imported as a top-level `kernels` (the repository root on sys.path, e.g. `python -m ...` run there,
# where transformers probes for the Hugging Face `kernels` package): expose nothing, so the probe
# sees no version and moves on.
