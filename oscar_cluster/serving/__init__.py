"""`oscar-serve`: Ray Serve deployments with OpenAI-compatible HTTP and Prometheus metrics.

config (typed YAML schema) -> protocol (request parsing) -> engine (transformers + OscarCache) ->
handler (endpoints, streaming, metrics) -> app (Ray Serve deployment, vLLM LLMConfig) -> cli.
"""
