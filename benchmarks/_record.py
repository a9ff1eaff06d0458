"""What every benchmark result records beside its numbers: date, exact command, host and versions."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from pathlib import Path

import torch


def provenance(**versions: str) -> dict:
    """date, command and host (CPU, Python, torch, threads, plus any `versions` given)."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "host": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                 "python": platform.python_version(), "torch": torch.__version__, **versions,
                 "threads": torch.get_num_threads(), "device": "cpu"},
    }


def write_result(out: str, result: dict) -> dict:
    """Write the JSON through a temporary file renamed into place: never half a result."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, path)
    return result
