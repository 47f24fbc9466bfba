"""``python -m coupled_mamba.data.basicmotions_npz FILE.npz``: write BasicMotions (sktime's bundled
copy, all 80 clips pooled) as an ``.npz`` file in the format of docs/data-npz.md, for
``coupled-mamba train --data FILE.npz --folds K`` (docs/results.md uses it)."""
from __future__ import annotations

import argparse

from .basicmotions import BASICMOTIONS_MODALITIES, save_basicmotions_npz


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m coupled_mamba.data.basicmotions_npz",
                                description="Write BasicMotions (80 clips, accelerometer and gyroscope, 4 "
                                            "classes; needs sktime) as an .npz file (docs/data-npz.md).")
    p.add_argument("out", metavar="FILE.npz", help="the file to write")
    args = p.parse_args(argv)
    n = save_basicmotions_npz(args.out)
    print(f"{args.out}: {n} clips, modalities {' '.join(BASICMOTIONS_MODALITIES)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
