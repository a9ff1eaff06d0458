"""Triton kernels for the packed OSCAR KV cache (installed as `oscar_cluster.kernels`).

Not built yet: write_kv, decode_attention and prefill_attention arrive with the kernels issue;
until then the PyTorch reference path (`oscar_cluster.cache.OscarCache`) is the only one.
"""
