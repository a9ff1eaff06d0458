"""`oscar:` Prometheus metrics of one replica, in its own registry (no process-global state).

Names follow vLLM's (`vllm:` becomes `oscar:`): gauges for the cache format and the KV memory in
use and saved against bf16, counters for requests and tokens, histograms for time to first token,
inter-token latency and end-to-end latency. Ray Serve's own metrics (`ray_serve_*`) are exported
by Ray's metrics agent, not here.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["ServeMetrics", "CONTENT_TYPE_LATEST"]

_TTFT = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_ITL = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
_E2E = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class ServeMetrics:
    def __init__(self, model: str, codec: str):
        self.registry = CollectorRegistry(auto_describe=True)
        labels = {"model_name": model, "codec": codec}
        r = self.registry

        def gauge(name, doc):
            return Gauge(name, doc, list(labels), registry=r).labels(**labels)

        self.bits_per_element = gauge("oscar:bits_per_element", "True KV bits per element at max context (codes, scales, bf16 tokens)")
        self.kv_bytes_per_token = gauge("oscar:kv_bytes_per_token", "KV cache bytes per token at max context, all layers")
        self.compression_ratio = gauge("oscar:kv_compression_ratio", "bf16 KV bytes / this codec's KV bytes at max context")
        self.capacity_tokens = gauge("oscar:kv_capacity_tokens_per_gib", "Tokens of KV that fit in 1 GiB with this codec")
        self.bf16_capacity_tokens = gauge("oscar:kv_bf16_capacity_tokens_per_gib", "Tokens of KV that fit in 1 GiB in bf16")
        self.kv_bytes_in_use = gauge("oscar:kv_cache_bytes_in_use", "KV bytes held by running requests")
        self.kv_bytes_saved = gauge("oscar:kv_cache_bytes_saved_vs_bf16", "bf16 bytes of the running requests' KV minus bytes in use")
        self.running = gauge("oscar:num_requests_running", "Requests generating now")
        self.requests = Counter("oscar:requests", "Finished requests", [*labels, "status"], registry=r)
        self._labels = labels
        self.prompt_tokens = Counter("oscar:prompt_tokens", "Prompt tokens processed", list(labels), registry=r).labels(**labels)
        self.generation_tokens = Counter("oscar:generation_tokens", "Tokens generated", list(labels), registry=r).labels(**labels)
        self.ttft = Histogram("oscar:time_to_first_token_seconds", "Time to first token", list(labels), buckets=_TTFT,
                              registry=r).labels(**labels)
        self.itl = Histogram("oscar:inter_token_latency_seconds", "Time between generated tokens", list(labels),
                             buckets=_ITL, registry=r).labels(**labels)
        self.e2e = Histogram("oscar:e2e_request_latency_seconds", "Request latency, first byte in to last byte out",
                             list(labels), buckets=_E2E, registry=r).labels(**labels)

    def finished(self, status: str) -> None:
        self.requests.labels(**self._labels, status=status).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
