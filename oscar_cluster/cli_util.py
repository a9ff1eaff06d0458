"""What every oscar-* command line shares: usage errors as one `error:` line with exit code 2."""

from __future__ import annotations

import argparse
import sys

__all__ = ["OneLineParser"]


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors print one line, `error: ... (see PROG --help)`, and exit 2
    (the same contract as an OscarError), instead of the usage block."""

    def error(self, message: str):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)
