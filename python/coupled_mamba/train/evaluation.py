"""``coupled-mamba evaluate`` (a checkpoint on its data) and ``coupled-mamba summarize`` (a table of
finished runs)."""
from __future__ import annotations

import argparse
import math
import os
from typing import Any, Dict, List, Optional, Sequence

import torch

from .. import metrics as metrics_mod
from ..data import SPLITS, load_data
from ..modules import MODEL_KINDS, build_model
from .artifacts import load_checkpoint, load_json, save_json
from .config import POSITIVE, check_model_options
from .distributed import resolve_device
from .errors import CommandParser, UsageError, fail
from .loop import predict

__all__ = ["evaluate_checkpoint", "build_evaluate_parser", "evaluate_main", "summarize_runs", "summarize_main",
           "build_checkpoint_model"]


def _check_model_config(cfg: Dict[str, Any], where: str) -> None:
    if cfg.get("kind") not in MODEL_KINDS:
        raise UsageError(f"{where}: kind: expected one of {', '.join(MODEL_KINDS)}, got {cfg.get('kind')!r}")
    dims = cfg.get("input_dims")
    if not isinstance(dims, list) or not dims or any(POSITIVE.problem(d) for d in dims):
        raise UsageError(f"{where}: input_dims: expected a non-empty list of positive integers, got {dims!r}")
    if cfg.get("task") not in ("regression", "classification"):
        raise UsageError(f"{where}: task: expected regression or classification, got {cfg.get('task')!r}")
    if POSITIVE.problem(cfg.get("num_classes")):
        raise UsageError(f"{where}: num_classes: {POSITIVE.problem(cfg.get('num_classes'))}")
    check_model_options({k: v for k, v in cfg.items() if k not in ("kind", "input_dims", "task", "num_classes")},
                        where)


def build_checkpoint_model(ck: Dict[str, Any], path: str) -> torch.nn.Module:
    """The model a checkpoint describes, with its weights; every size is checked against the weights
    on the meta device first, so a config that does not fit them allocates nothing."""
    where = f"{path}: model_config"
    cfg = ck["model_config"]
    _check_model_config(cfg, where)
    try:
        with torch.device("meta"):
            shapes = {k: tuple(v.shape) for k, v in build_model(**cfg).state_dict().items()}
    except (TypeError, ValueError, RuntimeError) as e:
        raise UsageError(f"{where}: does not describe a model ({e})") from None
    weights = ck["model"]
    missing = [k for k in shapes if k not in weights]
    unexpected = [k for k in weights if k not in shapes]
    wrong = [f"{k} {tuple(weights[k].shape)} (expected {shapes[k]})" for k in shapes
             if k in weights and tuple(weights[k].shape) != shapes[k]]
    problems = ([f"missing weight(s) {', '.join(missing[:3])}"] if missing else []) + \
               ([f"unexpected weight(s) {', '.join(unexpected[:3])}"] if unexpected else []) + \
               ([f"wrong shape(s) {', '.join(wrong[:3])}"] if wrong else [])
    if problems:
        raise UsageError(f"{path}: the weights do not fit the model_config {cfg['kind']} ({'; '.join(problems)})")
    model = build_model(**cfg)
    model.load_state_dict(weights)
    return model


def evaluate_checkpoint(checkpoint: str, data: Optional[str] = None, split: str = "test", device: str = "cpu",
                        batch_size: Optional[int] = None) -> Dict[str, Any]:
    """Metrics of a best.pt checkpoint on ``split`` of its data (``data``: a new path of the file).

    Returns {"metrics": ..., "recorded": the metrics stored at training time (or None),
    "data": the data source, "model": the model config, "epoch", "seed"}.
    """
    if split not in SPLITS:
        raise UsageError(f"split: expected one of {SPLITS}, got {split!r}")
    ck = load_checkpoint(checkpoint)
    info = ck["data"]
    if info["metrics"] not in metrics_mod.METRIC_FAMILIES:
        raise UsageError(f"{checkpoint}: data: unknown metric family {info['metrics']!r}")
    source = dict(info["source"])
    if data:
        if "path" not in source:
            raise UsageError(f"--data: the {info['name']} dataset is not read from a file")
        source["path"] = os.path.abspath(data)
    model = build_checkpoint_model(ck, checkpoint)
    try:
        splits = load_data(**source)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as e:
        raise UsageError(str(e)) from None
    ds = splits[split]
    cfg = ck["model_config"]
    if ds.input_dims != list(cfg["input_dims"]):
        raise UsageError(f"the data has feature widths {ds.input_dims}, the model expects {cfg['input_dims']}")
    if (ds.info.task, ds.info.num_classes) != (cfg["task"], cfg["num_classes"]):
        raise UsageError(f"the data is a {ds.info.task} task with {ds.info.num_classes} output(s), the model "
                         f"predicts {cfg['task']} with {cfg['num_classes']}")
    dev = resolve_device(device, 0, 1)
    model.to(dev)
    bs = batch_size or ck.get("eval_batch_size") or 256
    if POSITIVE.problem(bs):
        raise UsageError(f"{checkpoint}: eval_batch_size: {POSITIVE.problem(bs)}")
    mode = ck.get("metrics_mode", "default")
    if mode not in metrics_mod.METRIC_MODES:
        raise UsageError(f"{checkpoint}: metrics_mode: expected one of {', '.join(metrics_mod.METRIC_MODES)}, got {mode!r}")
    try:
        metrics = metrics_mod.compute_metrics(info["metrics"], *predict(model, ds, bs, dev), mode=mode)
    except ValueError as e:  # the mmsa mode is undefined on some label sets
        raise UsageError(f"{checkpoint}: metrics: {e}") from None
    return {"metrics": metrics, "recorded": ck.get(f"{split}_metrics"), "data": source,
            "model": cfg, "epoch": ck.get("epoch"), "seed": ck.get("seed")}


def build_evaluate_parser(prog: str = "coupled-mamba evaluate") -> argparse.ArgumentParser:
    p = CommandParser(
        prog=prog, description="Evaluate a checkpoint (best.pt) written by coupled-mamba train on its data.")
    p.add_argument("checkpoint", help="a best.pt file")
    p.add_argument("--data", metavar="PATH", help="the data file, if it moved (MMSA pickle or .npz file)")
    p.add_argument("--split", choices=SPLITS, default="test")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=POSITIVE, help="default: the one used in training")
    p.add_argument("--threads", type=POSITIVE)
    p.add_argument("--json", metavar="PATH", help="also write the metrics to this file")
    return p


def evaluate_main(argv: Optional[Sequence[str]] = None) -> int:
    """``coupled-mamba evaluate CHECKPOINT [--data PATH]``: prints the metrics; exit status 0."""
    args = build_evaluate_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        r = evaluate_checkpoint(args.checkpoint, args.data, args.split, args.device, args.batch_size)
    except UsageError as e:
        return fail("coupled-mamba evaluate", e)
    m = r["metrics"]
    print(f"{r['model']['kind']} (seed {r['seed']}, epoch {r['epoch']}) on {r['data']['name']} {args.split}:")
    width = max(len(k) for k in m)
    for k, v in m.items():
        print(f"  {k:<{width}}  {v:.4f}")
    rec = r["recorded"]
    if rec is not None:
        if rec == m:
            print("identical to the metrics recorded at training time")
        else:
            diff = ", ".join(f"{k} {rec.get(k) if isinstance(rec, dict) else None} -> {v}" for k, v in m.items()
                             if not isinstance(rec, dict) or rec.get(k) != v)
            print(f"differs from the metrics recorded at training time: {diff}")
    if args.json:
        try:
            save_json({"split": args.split, "metrics": m, "recorded": rec, "data": r["data"]}, args.json)
        except OSError as e:
            return fail("coupled-mamba evaluate", UsageError(f"--json {args.json}: {e.strerror or e}"))
    return 0


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _run_summary(run_dir: str, split: str) -> Dict[str, Any]:
    """A finished run's results.json, checked to hold what the table needs."""
    path = os.path.join(run_dir, "results.json")
    if not os.path.exists(path):
        raise UsageError(f"{run_dir}: no results.json (is it a finished coupled-mamba train run?)")
    what = "a run summary (results.json written by coupled-mamba train)"
    r = load_json(path, what)
    if not isinstance(r, dict) or not isinstance(r.get(split), dict):
        raise UsageError(f"{path}: not {what}: no {split!r} metrics")
    for k in ("model", "dataset"):
        if not isinstance(r.get(k), str):
            raise UsageError(f"{path}: not {what}: {k!r} is missing or not a name")
    if not isinstance(r.get("seeds"), list) or not r["seeds"]:
        raise UsageError(f"{path}: not {what}: 'seeds' is missing or empty")
    if "folds" in r and (not isinstance(r["folds"], int) or isinstance(r["folds"], bool) or r["folds"] < 2):
        raise UsageError(f"{path}: not {what}: 'folds' is not a number of folds (an integer >= 2)")
    mean, std = r[split].get("mean"), r[split].get("std")
    if not isinstance(mean, dict) or not mean or not all(_number(v) for v in mean.values()):
        raise UsageError(f"{path}: not {what}: {split}.mean is missing or holds a value that is not a number")
    if not isinstance(std, dict) or any(not _number(std.get(k)) for k in mean):
        raise UsageError(f"{path}: not {what}: {split}.std does not give a number for every metric")
    return r


def summarize_runs(run_dirs: Sequence[str], split: str = "test") -> str:
    """A markdown table of the mean ± std metrics of finished runs (their results.json): over seeds, or
    over folds for a cross-validation run."""
    if not run_dirs:
        raise UsageError("give at least one run folder")
    rows = [_run_summary(d, split) for d in run_dirs]
    keys: List[str] = []
    for r in rows:
        keys += [k for k in r[split]["mean"] if k not in keys]
    multi = any(len(r["seeds"]) > 1 or r.get("folds") for r in rows)
    head = ["model", "dataset", "seeds"] + keys
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * len(keys)) + "|"]
    for r in rows:
        m, sd = r[split]["mean"], r[split]["std"]
        cells = [("–" if k not in m else f"{m[k]:.4f} ± {sd[k]:.4f}" if multi else f"{m[k]:.4f}") for k in keys]
        seeds = " ".join(map(str, r["seeds"])) + (f" ({r['folds']} folds)" if r.get("folds") else "")
        lines.append("| " + " | ".join([r["model"], r["dataset"], seeds] + cells) + " |")
    return "\n".join(lines)


def summarize_main(argv: Optional[Sequence[str]] = None) -> int:
    """``coupled-mamba summarize RUN_DIR...``: prints a markdown table of the runs' metrics."""
    p = CommandParser(prog="coupled-mamba summarize",
                                description="Markdown table (mean ± std over seeds, or over the folds of a "
                                            "cross-validation run) of finished runs.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--split", choices=("test", "valid"), default="test")
    args = p.parse_args(argv)
    try:
        print(summarize_runs(args.runs, args.split))
    except UsageError as e:
        return fail("coupled-mamba summarize", e)
    return 0
