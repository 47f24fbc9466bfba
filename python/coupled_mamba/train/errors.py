"""The one exception the application reports without a traceback."""
from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType
from typing import NoReturn

__all__ = ["UsageError", "TRAIN_EXTRA", "require_module", "CommandParser"]

# The install command for what the training command needs beyond the op (progress bars, plots).
TRAIN_EXTRA = 'pip install "coupled-mamba[train]"'


class UsageError(Exception):
    """A problem with the command line, a data file or a run folder; the commands print it as one
    ``error:`` line and exit with status 2."""


def require_module(name: str, purpose: str) -> ModuleType:
    """Import ``name``, or fail with the command that installs it."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise UsageError(f"{name} is needed for {purpose} but cannot be imported ({e}); install it with "
                         f"{TRAIN_EXTRA}") from None


class CommandParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, ``PROG: error: ...`` (exit status 2), like every
    other error of the commands; ``--help`` shows the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def fail(prog: str, error: UsageError) -> int:
    """Print ``error`` as the command's one error line; returns the exit status 2."""
    print(f"{prog}: error: {error}", file=sys.stderr)
    return 2
