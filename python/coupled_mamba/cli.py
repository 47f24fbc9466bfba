"""The ``coupled-mamba`` console script: ``coupled-mamba train|evaluate|summarize ...``."""
from __future__ import annotations

import sys
from typing import Optional, Sequence

USAGE = """usage: coupled-mamba {train,evaluate,summarize} [options]

  train      train Coupled Mamba or a baseline; with no options, the default model on the
             embedded synthetic task (coupled-mamba train --help for every option)
  evaluate   evaluate a checkpoint written by train: coupled-mamba evaluate runs/.../best.pt
  summarize  markdown table of finished runs: coupled-mamba summarize runs/a runs/b
"""


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if argv else 2
    if argv[0] == "--version":
        from . import __version__

        print(f"coupled-mamba {__version__}")
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "train":
        from .train import main as train_main

        return train_main(rest)
    if cmd == "evaluate":
        from .train import evaluate_main

        return evaluate_main(rest)
    if cmd == "summarize":
        from .train import summarize_main

        return summarize_main(rest)
    print(USAGE, end="", file=sys.stderr)
    print(f"coupled-mamba: error: unknown command {cmd!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
