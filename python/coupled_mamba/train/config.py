"""The training command's options and the run configuration (config.json) they resolve to.

Every numeric option is checked when the command line is parsed (argparse reports it as
``argument --lr: expected ...``), and :func:`check_config` applies the same bounds to a config read
back from a run folder, so a bad value is refused before any data is loaded or model built.
"""
from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ..data import DATASETS, modality_names, read_npz
from ..ops.library import max_state
from ..modules import MODEL_KINDS
from .errors import CommandParser, UsageError
from .optim import COUPLING_LR_SCALE

__all__ = [
    "build_parser", "resolve_config", "check_config", "check_model_options", "explicit_options",
    "DATASET_DEFAULTS", "PAPER_DEFAULTS", "SELECT_DEFAULTS", "MODEL_OPTIONS", "RUNTIME_KEYS", "MAX_STATE",
]

# The paper's optimisation settings (section 4.1); batch sizes per dataset below.
PAPER_DEFAULTS = dict(optimizer="adam", lr=5e-4, weight_decay=5e-4, epochs=150)

# Per-dataset defaults. The real datasets use the paper's settings (model: build_model's defaults,
# d_model 128, 3 layers, d_state 64, seq_len 50). The embedded task is sized to train in a few
# minutes on 2 CPU cores.
DATASET_DEFAULTS: Dict[str, Dict[str, Any]] = {
    "synthetic": dict(epochs=10, batch_size=64, model=dict(d_model=64, n_layers=2, d_state=16, seq_len=32)),
    "mosi": dict(epochs=150, batch_size=128, model={}),
    "mosei": dict(epochs=150, batch_size=1024, model={}),
    "sims": dict(epochs=150, batch_size=128, model={}),
    "simsv2": dict(epochs=150, batch_size=256, model={}),
    "basicmotions": dict(epochs=60, batch_size=8, model=dict(d_model=32, n_layers=2, d_state=16, seq_len=50)),
    # the user's own .npz file: a small model that trains on a CPU; any option can override it
    "npz": dict(epochs=30, batch_size=32, model=dict(d_model=64, n_layers=2, d_state=16, seq_len=64)),
}
# Model-selection metric per metric family (valid split).
SELECT_DEFAULTS = {"mosi": "MAE", "sims": "MAE", "classification": "Acc", "sentiment3": "Mult_acc_3",
                   "regression": "MAE"}
SELECT_DEFAULTS_MMSA = {**SELECT_DEFAULTS, "sentiment3": "Acc_3"}  # MMSA names the 3-class accuracy so
MODEL_OPTIONS = ("d_model", "n_layers", "d_state", "d_conv", "expand", "dt_rank", "seq_len", "align",
                 "dropout", "n_heads")
# Options that may change when a run is resumed (they do not change the result).
RUNTIME_KEYS = ("device", "threads", "quiet", "out", "resume", "overwrite", "checkpoint_every")

# SSM states the scan library supports, read from the compiled library (kMaxState).
MAX_STATE = max_state()
_MAX_SEED = 2 ** 63 - 1


@dataclass(frozen=True)
class Bound:
    """The accepted values of one numeric option; also an argparse ``type``."""

    integer: bool
    low: float
    high: Optional[float] = None
    low_open: bool = False  # the value must exceed ``low``
    high_open: bool = False  # the value must stay below ``high``

    def describe(self) -> str:
        what = "an integer" if self.integer else "a finite number"
        if self.high is None:
            return f"{what} {'>' if self.low_open else '>='} {self.low:g}"
        lo, hi = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"{what} in {lo}{self.low:g}, {self.high:g}{hi}"

    def problem(self, value: Any) -> Optional[str]:
        """None when ``value`` is accepted, else what was expected and what was given."""
        if self.integer:
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if ok:
            ok = (value > self.low if self.low_open else value >= self.low)
        if ok and self.high is not None:
            ok = (value < self.high if self.high_open else value <= self.high)
        return None if ok else f"expected {self.describe()}, got {value!r}"

    def __call__(self, text: str):
        try:
            value = int(text) if self.integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {self.describe()}, got {text!r}") from None
        msg = self.problem(value)
        if msg:
            raise argparse.ArgumentTypeError(msg)
        return value


POSITIVE = Bound(True, 1)
FOLDS = Bound(True, 2)
NON_NEGATIVE = Bound(True, 0)
SEED = Bound(True, 0, _MAX_SEED)
POSITIVE_REAL = Bound(False, 0, low_open=True)
NON_NEGATIVE_REAL = Bound(False, 0)

MODEL_OPTION_BOUNDS: Dict[str, Bound] = {
    "d_model": POSITIVE, "n_layers": POSITIVE, "d_state": Bound(True, 1, MAX_STATE), "d_conv": POSITIVE,
    "expand": POSITIVE, "dt_rank": POSITIVE, "seq_len": POSITIVE, "dropout": Bound(False, 0, 1, high_open=True),
    "n_heads": POSITIVE,
}
TRAINING_BOUNDS: Dict[str, Bound] = {
    "epochs": POSITIVE, "batch_size": POSITIVE, "eval_batch_size": POSITIVE, "lr": POSITIVE_REAL,
    "weight_decay": NON_NEGATIVE_REAL, "grad_clip": NON_NEGATIVE_REAL, "patience": NON_NEGATIVE,
    "checkpoint_every": NON_NEGATIVE,
}
# Optional keys of a run configuration, with the value a configuration without them means.
OPTIONAL_TRAINING_BOUNDS: Dict[str, Bound] = {"coupling_lr_scale": POSITIVE_REAL}
ALIGN_CHOICES = ("resample", "pad")

# Defaults of the options that have one; applied with set_defaults so that explicit_options can
# parse the same command line without them.
_DEFAULTS = dict(data_seed=0, model="coupled-mean", lr=PAPER_DEFAULTS["lr"],
                 weight_decay=PAPER_DEFAULTS["weight_decay"], grad_clip=0.0, patience=0, eval_batch_size=256,
                 seed=0, device="auto", resume=False, overwrite=False, checkpoint_every=0, quiet=False,
                 coupling_lr_scale=COUPLING_LR_SCALE)


def build_parser(prog: str = "coupled-mamba train", with_defaults: bool = True) -> argparse.ArgumentParser:
    """The ``coupled-mamba train`` parser. ``with_defaults=False``: options not given are absent."""
    p = CommandParser(
        prog=prog,
        description="Train Coupled Mamba (or a baseline) on multimodal sequence data; select on the "
                    "validation split, report test metrics. With no options: the default model on the "
                    "embedded synthetic task.",
        argument_default=None if with_defaults else argparse.SUPPRESS,
    )
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=DATASETS,
                   help="synthetic (embedded, default), an MMSA feature pickle (mosi, mosei, sims, simsv2; "
                        "give --data), basicmotions (needs sktime), or npz, your own data in an .npz file "
                        "(docs/data-npz.md; chosen automatically when --data ends in .npz)")
    g.add_argument("--data", metavar="PATH",
                   help="your .npz file (read without unpickling), or the MMSA feature pickle, e.g. "
                        "unaligned_50.pkl. A pickle can run code when it is opened: it is read with a loader "
                        "that accepts only arrays, lists, dicts, strings and numbers, but open only files from "
                        "a source you trust (docs/data.md)")
    g.add_argument("--task", choices=("regression", "classification"),
                   help="regression (default) or 3-class classification (negative/neutral/positive); npz: "
                        "from the labels' dtype unless given")
    g.add_argument("--modalities", nargs="+", metavar="NAME",
                   help="use only these modalities (synthetic: a b c; MMSA: text audio vision; "
                        "basicmotions: accelerometer gyroscope; npz: the file's)")
    g.add_argument("--data-seed", type=SEED, metavar="SEED",
                   help="seed of the synthetic data / the BasicMotions and npz splits and folds")
    g.add_argument("--folds", type=FOLDS, metavar="K",
                   help="npz: K-fold cross-validation (grouped by the file's groups, else stratified by "
                        "class); each fold trained like a seed, results as mean ± std over folds")
    g.add_argument("--n-train", type=POSITIVE, metavar="N", help="synthetic: training samples (default 2000)")
    g.add_argument("--n-valid", type=POSITIVE, metavar="N", help="synthetic: validation samples (default 500)")
    g.add_argument("--n-test", type=POSITIVE, metavar="N", help="synthetic: test samples (default 1000)")

    b = MODEL_OPTION_BOUNDS
    g = p.add_argument_group("model (defaults: the paper's for real data, smaller for synthetic)")
    g.add_argument("--model", choices=MODEL_KINDS, help="coupled-<coupling> or a baseline (default coupled-mean)")
    g.add_argument("--d-model", type=b["d_model"], metavar="N", help="width (default 128; synthetic 64, basicmotions 32)")
    g.add_argument("--n-layers", type=b["n_layers"], metavar="N", help="layers (default 3; synthetic and basicmotions 2)")
    g.add_argument("--d-state", type=b["d_state"], metavar="N",
                   help=f"SSM state size, at most {MAX_STATE} (default 64; synthetic and basicmotions 16)")
    g.add_argument("--d-conv", type=b["d_conv"], metavar="N", help="causal conv width (default 4)")
    g.add_argument("--expand", type=b["expand"], metavar="N", help="inner width / d_model (default 2)")
    g.add_argument("--dt-rank", type=b["dt_rank"], metavar="N", help="default ceil(d_state / 8), the paper's d_state/8")
    g.add_argument("--seq-len", type=b["seq_len"], metavar="N",
                   help="common length after alignment, the most steps a sample is scanned over (default 50; "
                        "synthetic 32; npz 64)")
    g.add_argument("--align", choices=ALIGN_CHOICES, help="resample each sample's valid part to --seq-len "
                   "bins (default), or pad each batch to its longest recording with masks, keeping at most "
                   "the first --seq-len steps")
    g.add_argument("--dropout", type=b["dropout"], metavar="P", help="in [0, 1), default 0.1")
    g.add_argument("--n-heads", type=b["n_heads"], metavar="N", help="attention baselines (default 4)")

    t = TRAINING_BOUNDS
    g = p.add_argument_group("optimisation (defaults: the paper's)")
    g.add_argument("--epochs", type=t["epochs"], metavar="N",
                   help="default: 150 (real data), 10 (synthetic), 60 (basicmotions)")
    g.add_argument("--batch-size", type=t["batch_size"], metavar="N",
                   help="default: mosei 1024, sims 128, simsv2 256, mosi 128, synthetic 64, basicmotions 8")
    g.add_argument("--lr", type=t["lr"], metavar="LR", help="Adam learning rate (5e-4)")
    g.add_argument("--weight-decay", type=t["weight_decay"], metavar="WD", help="Adam weight decay (5e-4)")
    g.add_argument("--coupling-lr-scale", type=POSITIVE_REAL, metavar="X",
                   help=f"coupled-learned: the coupling logits' learning rate is X times --lr, without weight "
                        f"decay (default {COUPLING_LR_SCALE:g}; 1 = the same as every other weight)")
    g.add_argument("--loss", choices=("l1", "mse", "ce"), help="default: l1 (regression), ce (classification)")
    g.add_argument("--grad-clip", type=t["grad_clip"], metavar="NORM", help="clip the gradient norm (0: off)")
    g.add_argument("--patience", type=t["patience"], metavar="N",
                   help="stop after this many epochs without improvement (0: off)")
    g.add_argument("--metrics", choices=("default", "mmsa"),
                   help="metric definitions: default, or mmsa for MMSA 2.2.1's MetricsTop numbers, quirks "
                        "included, to compare with published tables (docs/metrics.md)")
    g.add_argument("--select", metavar="METRIC",
                   help="validation metric for model selection (default MAE, or accuracy for classification)")
    g.add_argument("--eval-batch-size", type=t["eval_batch_size"], metavar="N",
                   help="batch size for evaluation (256)")

    g = p.add_argument_group("run")
    g.add_argument("--seed", type=SEED, metavar="SEED", help="training seed (default 0)")
    g.add_argument("--seeds", type=SEED, nargs="+", metavar="SEED",
                   help="several training seeds; reports their mean and standard deviation")
    g.add_argument("--device", help="auto (cuda if available), cpu, cuda, cuda:N")
    g.add_argument("--threads", type=POSITIVE, metavar="N", help="torch CPU threads")
    g.add_argument("--out", metavar="DIR", help="output folder (default runs/<dataset>-<model>, -2, -3... if taken)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out (default: the latest "
                   "runs/<dataset>-<model>*) from its last checkpoint")
    g.add_argument("--overwrite", action="store_true", help="delete a previous run in --out and start again")
    g.add_argument("--checkpoint-every", type=t["checkpoint_every"], metavar="N",
                   help="also save the resume state every N batches (0: at the end of each epoch only)")
    g.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    if with_defaults:
        p.set_defaults(**_DEFAULTS)
    return p


def explicit_options(argv: Sequence[str]) -> List[str]:
    """The destinations of the options given on the command line ``argv`` (not defaulted)."""
    return sorted(vars(build_parser(with_defaults=False).parse_args(list(argv))))


def resolve_config(args: argparse.Namespace) -> Dict[str, Any]:
    """Fill the dataset-dependent defaults; returns a JSON-able dict (the run's config.json)."""
    ds = args.dataset or ("npz" if args.data and args.data.lower().endswith(".npz") else "synthetic")
    d = DATASET_DEFAULTS[ds]
    if ds == "npz":
        if not args.data:
            raise UsageError("--dataset npz needs --data FILE.npz")
        try:
            contents = read_npz(args.data, task=args.task)
        except (ValueError, TypeError, FileNotFoundError) as e:
            raise UsageError(str(e)) from None
        task, known = contents.task, list(contents.modalities)
    else:
        task = args.task or ("classification" if ds == "basicmotions" else "regression")
        known = modality_names(ds)
    if ds == "basicmotions" and task != "classification":
        raise UsageError("basicmotions is a classification task")
    if getattr(args, "folds", None) is not None and ds != "npz":
        raise UsageError(f"--folds applies to .npz data (--data FILE.npz), not to --dataset {ds}")
    mods = list(args.modalities) if args.modalities else list(known)
    if len(set(mods)) != len(mods):
        raise UsageError(f"--modalities: {' '.join(mods)} repeats a name")
    for m in mods:
        if m not in known:
            raise UsageError(f"--modalities: {m!r} is not a modality of {ds} ({' '.join(known)})")
    if ds in ("mosi", "mosei", "sims", "simsv2") and not args.data:
        raise UsageError(f"--dataset {ds} needs --data PATH, the MMSA feature pickle")
    data_options: Dict[str, Any] = {}
    if ds == "synthetic":
        data_options["seed"] = args.data_seed
        for k in ("n_train", "n_valid", "n_test"):
            if getattr(args, k) is not None:
                data_options[k] = getattr(args, k)
    elif ds in ("basicmotions", "npz"):
        data_options["seed"] = args.data_seed
    elif any(getattr(args, k) is not None for k in ("n_train", "n_valid", "n_test")):
        raise UsageError("--n-train/--n-valid/--n-test apply to the synthetic dataset only")

    model_options = dict(d["model"])
    for k in MODEL_OPTIONS:
        v = getattr(args, k)
        if v is not None:
            model_options[k] = v
    loss = args.loss or ("ce" if task == "classification" else "l1")
    if (loss == "ce") != (task == "classification"):
        raise UsageError(f"--loss {loss} does not fit a {task} task")
    seeds = list(args.seeds) if args.seeds else [args.seed]
    if len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds: {seeds} repeats a seed")
    cfg = dict(
        dataset=ds,
        data=os.path.abspath(args.data) if args.data else None,
        task=task,
        modalities=mods,
        data_options=data_options,
        model=args.model,
        model_options=model_options,
        epochs=args.epochs if args.epochs is not None else d["epochs"],
        batch_size=args.batch_size if args.batch_size is not None else d["batch_size"],
        eval_batch_size=args.eval_batch_size,
        optimizer="adam",
        lr=args.lr,
        weight_decay=args.weight_decay,
        coupling_lr_scale=args.coupling_lr_scale,
        loss=loss,
        grad_clip=args.grad_clip,
        patience=args.patience,
        select=args.select,  # resolved once the metric family is known
        metrics=args.metrics or "default",
        seeds=seeds,
        checkpoint_every=args.checkpoint_every,
    )
    if getattr(args, "folds", None) is not None:
        cfg["folds"] = args.folds
    check_config(cfg, "the command line")
    return cfg


def check_model_options(options: Any, where: str) -> None:
    """Refuse model options with an unknown name or a value out of range (``where``: whose options)."""
    if not isinstance(options, Mapping):
        raise UsageError(f"{where}: expected a dict of model options, got {type(options).__name__}")
    for k, v in options.items():
        if k == "align":
            if v not in ALIGN_CHOICES:
                raise UsageError(f"{where}: align: expected one of {ALIGN_CHOICES}, got {v!r}")
            continue
        if k not in MODEL_OPTION_BOUNDS:
            raise UsageError(f"{where}: unknown model option {k!r} (known: {', '.join(MODEL_OPTIONS)})")
        if k == "dt_rank" and v is None:
            continue
        msg = MODEL_OPTION_BOUNDS[k].problem(v)
        if msg:
            raise UsageError(f"{where}: {k}: {msg}")


_CONFIG_KEYS = ("dataset", "data", "task", "modalities", "data_options", "model", "model_options", "epochs",
                "batch_size", "eval_batch_size", "optimizer", "lr", "weight_decay", "loss", "grad_clip",
                "patience", "select", "seeds", "checkpoint_every")


def check_config(cfg: Any, where: str) -> None:
    """Refuse a run configuration that is incomplete or holds a value the command would refuse."""
    if not isinstance(cfg, dict):
        raise UsageError(f"{where}: expected a run configuration (a JSON object), got {type(cfg).__name__}")
    missing = [k for k in _CONFIG_KEYS if k not in cfg]
    if missing:
        raise UsageError(f"{where}: not a run configuration, missing {', '.join(missing)}")
    choices = dict(dataset=DATASETS, model=MODEL_KINDS, task=("regression", "classification"),
                   loss=("l1", "mse", "ce"), optimizer=("adam",))
    for k, allowed in choices.items():
        if cfg[k] not in allowed:
            raise UsageError(f"{where}: {k}: expected one of {', '.join(allowed)}, got {cfg[k]!r}")
    for k, bound in TRAINING_BOUNDS.items():
        msg = bound.problem(cfg[k])
        if msg:
            raise UsageError(f"{where}: {k}: {msg}")
    for k, bound in OPTIONAL_TRAINING_BOUNDS.items():
        msg = bound.problem(cfg[k]) if k in cfg else None
        if msg:
            raise UsageError(f"{where}: {k}: {msg}")
    seeds = cfg["seeds"]
    if not isinstance(seeds, list) or not seeds or any(SEED.problem(s) for s in seeds):
        raise UsageError(f"{where}: seeds: expected a non-empty list of {SEED.describe()}s, got {seeds!r}")
    mods = cfg["modalities"]
    if not isinstance(mods, list) or not mods or not all(isinstance(m, str) for m in mods):
        raise UsageError(f"{where}: modalities: expected a non-empty list of names, got {mods!r}")
    if not isinstance(cfg["data_options"], dict):
        raise UsageError(f"{where}: data_options: expected a JSON object, got {cfg['data_options']!r}")
    if cfg["data"] is not None and not isinstance(cfg["data"], str):
        raise UsageError(f"{where}: data: expected a path or null, got {cfg['data']!r}")
    if cfg.get("metrics", "default") not in ("default", "mmsa"):
        raise UsageError(f"{where}: metrics: expected default or mmsa, got {cfg['metrics']!r}")
    if cfg.get("folds") is not None and (FOLDS.problem(cfg["folds"]) or cfg["dataset"] != "npz"):
        raise UsageError(f"{where}: folds: expected {FOLDS.describe()} for npz data, got {cfg['folds']!r}")
    if cfg["select"] is not None and not isinstance(cfg["select"], str):
        raise UsageError(f"{where}: select: expected a metric name or null, got {cfg['select']!r}")
    check_model_options(cfg["model_options"], f"{where}: model_options")
