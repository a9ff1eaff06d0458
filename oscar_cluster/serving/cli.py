"""`oscar-serve CONFIG.yaml [--dry-run]`: serve a model on Ray Serve (OpenAI-compatible HTTP).

--dry-run validates the config and prints the resolved Ray Serve config (checked against Ray's
`ServeDeploySchema`; for the vllm engine also the structure of its LLMConfig) without starting
anything. Without it: starts (or joins, --address) a Ray cluster, deploys, prints the URL and
serves until interrupted.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import traceback

import yaml

from ..errors import OscarError
from .config import load_serve_config
from ..cli_util import OneLineParser

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="oscar-serve", description=__doc__.splitlines()[0])
    p.add_argument("config", help="serve config YAML (see examples/serve-smollm2.yaml)")
    p.add_argument("--dry-run", action="store_true", help="validate and print the Ray Serve config; start nothing")
    p.add_argument("--address", default=None, help="Ray cluster to join (default: start a local one)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def resolved(path: str) -> dict:
    """Load, validate and resolve a config into the Ray Serve config; raises OscarError."""
    from ..planner.emit import check_serve_config, validate_with_ray
    from .app import serve_config

    from pathlib import Path

    cfg = load_serve_config(path)
    doc = serve_config(cfg)
    if cfg.engine == "vllm":
        check_serve_config({"applications": doc["applications"]})
        if cfg.model.artifact and not Path(cfg.model.artifact).exists():
            print(f"note: model.artifact {cfg.model.artifact} is not on this machine; the OSCAR backend checks it "
                  "against the model when the engine starts", file=sys.stderr)
    validate_with_ray(doc)
    return doc


def _run(path: str, address: str | None) -> int:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import serve

    from .app import app_builder, serve_config

    cfg = load_serve_config(path)
    doc = serve_config(cfg)
    if cfg.engine == "vllm":
        try:
            from ray.serve.llm import build_openai_app  # needs vLLM in this environment
        except ImportError as e:
            raise OscarError(f"the vllm engine needs vLLM and ray[llm] here ({e}); check the config with --dry-run "
                             "or deploy its output with `serve deploy`") from None
        app = build_openai_app(doc["applications"][0]["args"])
    else:
        app = app_builder(doc["applications"][0]["args"])
    stop = threading.Event()  # Ctrl-C / SIGTERM: stop cleanly, also while the app is still starting
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    ray.init(address=address, include_dashboard=False, log_to_driver=False)
    serve.start(http_options=doc["http_options"])
    serve.run(app, name=cfg.app_name, route_prefix="/")
    print(f"oscar-serve: {cfg.model.model_id} on http://{cfg.http.host}:{cfg.http.port}/v1 (Ctrl-C stops)", flush=True)
    while not stop.wait(1.0):
        pass
    for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not interrupt the shutdown
        signal.signal(sig, signal.SIG_IGN)
    print("oscar-serve: stopping", flush=True)
    serve.shutdown()
    ray.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.dry_run:
            print(yaml.safe_dump(resolved(args.config), sort_keys=False), end="")
            return 0
        return _run(args.config, args.address)
    except OscarError as e:
        if args.debug:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
