"""``python -m coupled_mamba.train [options]`` is ``coupled-mamba train [options]``."""
import sys

from .runs import main

if __name__ == "__main__":
    sys.exit(main())
