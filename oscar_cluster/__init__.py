"""OSCAR cluster: a ~2-bit KV cache (OSCAR codec) with calibration, evaluation and serving tools."""

__version__ = "0.1.0"
