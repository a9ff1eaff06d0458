"""Shared helpers for the planner tests (oscar_cluster.planner is the installed `planner/`)."""

import json
from pathlib import Path

import pytest

from oscar_cluster.planner import PlanRequest, find_gpu, find_model
from oscar_cluster.planner.cli import main


@pytest.fixture
def cli(capsys):
    """Run oscar-plan in-process: returns (exit code, stdout, stderr)."""

    def run(*args: str):
        rc = main([str(a) for a in args])
        out = capsys.readouterr()
        return rc, out.out, out.err

    return run


@pytest.fixture(scope="session")
def request_for():
    def make(model="70b", gpu="h100", ctx=131072, batch=32, **kw):
        return PlanRequest(model=find_model(model), gpu=find_gpu(gpu), ctx=ctx, batch=batch, **kw)

    return make


@pytest.fixture
def write_config(tmp_path):
    """Write a transformers-style config.json; returns its path."""

    def write(cfg: dict, name: str = "model") -> Path:
        d = tmp_path / name
        d.mkdir(parents=True, exist_ok=True)
        p = d / "config.json"
        p.write_text(json.dumps(cfg))
        return p

    return write
