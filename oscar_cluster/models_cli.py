"""`oscar-models`: list the registered models and fetch one.

    oscar-models list [--format table|json]
    oscar-models fetch NAME [--quiet]

Failures the user can act on print one line `error: ...` to stderr and exit with code 2;
`--debug` adds the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from typing import Any, Sequence

from .errors import OscarError
from .models import REGISTRY, fetch, installed
from .cli_util import OneLineParser

__all__ = ["main"]


def _human_bytes(n: int) -> str:
    """1,117,320,768 -> '1.04 GiB'; 0 -> '-'."""
    if not n:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _render_table(rows: list[dict[str, Any]]) -> None:
    """Print `installed()` rows as a rich table on stdout."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="OSCAR models")
    for column in ("name", "status", "size"):
        table.add_column(column, no_wrap=True)
    table.add_column("arch", overflow="fold")
    table.add_column("path", overflow="fold")
    for r in rows:
        table.add_row(r["name"], r["status"], _human_bytes(r["size"]), r["arch"], r["path"] or "-")
    Console().print(table)


def _parser() -> argparse.ArgumentParser:
    """argparse tree: one sub-command per action, one flag per parameter."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the traceback on errors")
    ap = OneLineParser(prog="oscar-models", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    ls = sub.add_parser("list", parents=[common], help="registered models and where they stand")
    ls.add_argument("--format", choices=["table", "json"], default="table")
    fe = sub.add_parser("fetch", parents=[common], help="download, verify and convert a model")
    fe.add_argument("name", help=f"one of: {', '.join(REGISTRY)}")
    fe.add_argument("--quiet", action="store_true", help="no progress bars")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `oscar-models` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    quiet = getattr(args, "quiet", False)
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s")
    try:
        if args.cmd == "list":
            rows = installed()
            if args.format == "json":
                print(json.dumps(rows, indent=2))
            else:
                _render_table(rows)
        else:
            print(fetch(args.name, progress=not quiet))
    except OscarError as e:
        if args.debug:
            traceback.print_exc()
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
