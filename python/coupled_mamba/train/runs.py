"""The training command: the run folder (new, overwritten or resumed), every seed in turn, and the
summary over seeds (results.json and the printed table)."""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .. import metrics as metrics_mod
from ..data import SPLITS, MultimodalDataset, load_data, load_npz_folds
from .artifacts import load_json, save_json
from .config import RUNTIME_KEYS, SELECT_DEFAULTS, SELECT_DEFAULTS_MMSA, build_parser, check_config, explicit_options, resolve_config
from .distributed import DistributedContext
from .errors import UsageError, fail, require_module
from .loop import Runtime, train_seed
from .memory import retain_freed_memory
from .stores import SeedFolder

__all__ = ["main", "run_training", "load_splits", "load_fold_splits", "resolve_select", "summarize_seeds",
           "summarize_folds"]


def _default_out(cfg: Dict[str, Any], resume: bool) -> str:
    base = os.path.join("runs", f"{cfg['dataset']}-{cfg['model']}")
    taken = [base] if os.path.exists(base) else []
    k = 2
    while os.path.exists(f"{base}-{k}"):
        taken.append(f"{base}-{k}")
        k += 1
    if resume:
        return taken[-1] if taken else base
    if not taken or not os.listdir(base):
        return base
    return f"{base}-{k}"


def _prepare_out(args: argparse.Namespace, cfg: Dict[str, Any], argv: Sequence[str]) -> Tuple[str, Dict[str, Any]]:
    """The output folder, and the config to use (a resumed run keeps its saved one)."""
    out = args.out or _default_out(cfg, args.resume)
    cfg_path = os.path.join(out, "config.json")
    if os.path.exists(cfg_path):
        if args.resume:
            saved = load_json(cfg_path, "a run configuration (config.json written by coupled-mamba train)")
            check_config(saved, cfg_path)
            given = explicit_options(argv)
            ignored = [k for k in given if k not in RUNTIME_KEYS]
            if "checkpoint_every" in given or "checkpoint_every" not in saved:
                saved["checkpoint_every"] = cfg["checkpoint_every"]
            if ignored:
                print(f"note: a resumed run keeps its saved settings; ignoring "
                      f"{', '.join('--' + k.replace('_', '-') for k in ignored)}", file=sys.stderr)
            return out, saved
        if args.overwrite:
            shutil.rmtree(out)
        else:
            raise UsageError(f"{out} holds a previous run: pass --resume to continue it, --overwrite to "
                             "start again, or choose another --out")
    elif args.resume:
        print(f"note: no run to resume in {out}; starting a new one", file=sys.stderr)
    return out, cfg


def load_splits(cfg: Dict[str, Any]) -> Dict[str, MultimodalDataset]:
    """The data a run configuration names."""
    try:
        return load_data(cfg["dataset"], path=cfg["data"], task=cfg["task"], modalities=cfg["modalities"],
                         **cfg["data_options"])
    except (ValueError, TypeError, FileNotFoundError, ImportError) as e:
        raise UsageError(str(e)) from None


def load_fold_splits(cfg: Dict[str, Any]) -> List[Dict[str, MultimodalDataset]]:
    """The split dict of every fold of a cross-validation run (``cfg["folds"]`` folds of its .npz file)."""
    try:
        return load_npz_folds(cfg["data"], cfg["folds"], modalities=cfg["modalities"], task=cfg["task"],
                              seed=cfg["data_options"].get("seed", 0))
    except (ValueError, TypeError, FileNotFoundError) as e:
        raise UsageError(str(e)) from None


def resolve_select(select: Optional[str], family: str, num_classes: int, mode: str = "default") -> str:
    """The model-selection metric: ``select``, or the family's default; checked against its names."""
    try:
        names = metrics_mod.metric_names(family, num_classes, mode) + ["Loss"]
    except ValueError as e:
        raise UsageError(f"--metrics {mode}: {e}") from None
    select = select or (SELECT_DEFAULTS_MMSA if mode == "mmsa" else SELECT_DEFAULTS)[family]
    if select not in names:
        raise UsageError(f"--select {select}: expected one of {', '.join(names)}")
    return select


def _mean_std(per_seed: List[Dict[str, Any]], split: str) -> Tuple[Dict[str, float], Dict[str, float]]:
    mean, std = {}, {}
    for k in per_seed[0][split]:
        v = np.array([r[split][k] for r in per_seed], dtype=np.float64)
        mean[k] = round(float(v.mean()), 4)
        std[k] = round(float(v.std(ddof=1)), 4) if len(v) > 1 else 0.0
    return mean, std


def summarize_seeds(cfg: Dict[str, Any], per_seed: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The run's results.json: mean and sample std over seeds of the valid and test metrics."""
    test_mean, test_std = _mean_std(per_seed, "test")
    valid_mean, valid_std = _mean_std(per_seed, "valid")
    return {
        "dataset": cfg["dataset"],
        "model": cfg["model"],
        "seeds": cfg["seeds"],
        "test": {"mean": test_mean, "std": test_std},
        "valid": {"mean": valid_mean, "std": valid_std},
        "std": "sample standard deviation over seeds (n - 1); 0 for one seed",
        "per_seed": {str(r["seed"]): _seed_entry(r) for r in per_seed},
        "config": cfg,
    }


def _seed_entry(r: Dict[str, Any]) -> Dict[str, Any]:
    entry = {"best_epoch": r["best_epoch"], "valid": r["valid"], "test": r["test"]}
    if "coupling_weights" in r:
        entry["coupling_weights"] = r["coupling_weights"]
    return entry


def summarize_folds(cfg: Dict[str, Any], per_fold: List[List[Dict[str, Any]]]) -> Dict[str, Any]:
    """A cross-validation run's results.json: each fold's metrics (averaged over its seeds), and their
    mean and sample std over the folds."""
    folds = []
    for results in per_fold:
        test_mean, _ = _mean_std(results, "test")
        valid_mean, _ = _mean_std(results, "valid")
        folds.append({"valid": valid_mean, "test": test_mean,
                      "per_seed": {str(r["seed"]): _seed_entry(r) for r in results}})
    test_mean, test_std = _mean_std(folds, "test")
    valid_mean, valid_std = _mean_std(folds, "valid")
    return {
        "dataset": cfg["dataset"],
        "model": cfg["model"],
        "seeds": cfg["seeds"],
        "folds": len(per_fold),
        "test": {"mean": test_mean, "std": test_std},
        "valid": {"mean": valid_mean, "std": valid_std},
        "std": "sample standard deviation over the folds (n - 1); each fold's metrics are the mean over its seeds",
        "per_fold": {str(k): f for k, f in enumerate(folds)},
        "config": cfg,
    }


def _summary_lines(cfg: Dict[str, Any], per_seed: List[Dict[str, Any]], summary: Dict[str, Any], out: str) -> str:
    mean, std = summary["test"]["mean"], summary["test"]["std"]
    width = max(len(k) for k in mean)
    folds = summary.get("folds")
    seeds = ' '.join(map(str, cfg['seeds']))
    if folds:
        head = f", mean ± std over {folds} folds ({'seeds' if len(cfg['seeds']) > 1 else 'seed'} {seeds}):"
    elif len(per_seed) > 1:
        head = f", mean ± std over seeds {seeds}:"
    else:
        head = f" (seed {cfg['seeds'][0]}, best epoch {per_seed[0]['best_epoch']}):"
    lines = [f"test metrics of {cfg['model']} on {cfg['dataset']}" + head]
    for k in mean:
        spread = f" ± {std[k]:.4f}" if len(per_seed) > 1 or folds else ""
        lines.append(f"  {k:<{width}}  {mean[k]:.4f}{spread}")
    lines.append(f"results in {os.path.join(out, 'results.json')}")
    return "\n".join(lines)


def run_training(args: argparse.Namespace, ctx: DistributedContext, argv: Sequence[str]) -> int:
    """``coupled-mamba train`` after parsing: every seed of the run in ``--out``."""
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = resolve_config(args)
    progress = (not args.quiet) and ctx.is_main and sys.stderr.isatty()
    require_module("matplotlib", "the training command's learning curves")
    if progress:
        require_module("tqdm", "the training command's progress bars")

    out, err = None, None
    if ctx.is_main:
        try:
            out, cfg = _prepare_out(args, cfg, argv)
        except UsageError as e:
            err = str(e)
    out, cfg, err = ctx.broadcast((out, cfg, err))
    if err:
        raise UsageError(err)

    folds = cfg.get("folds")
    fold_splits = load_fold_splits(cfg) if folds else [load_splits(cfg)]
    splits = fold_splits[0]
    info = splits["train"].info
    cfg["select"] = resolve_select(cfg["select"], info.metrics, info.num_classes, cfg.get("metrics", "default"))

    rt = Runtime(ctx, quiet=args.quiet, progress=progress, resume=args.resume,
                 checkpoint_every=cfg["checkpoint_every"])
    if ctx.is_main:
        os.makedirs(out, exist_ok=True)
        save_json(cfg, os.path.join(out, "config.json"))
        mods = ", ".join(f"{m} ({d} features x {L} steps)" for m, d, L in
                         zip(info.modalities, splits["train"].input_dims, splits["train"].seq_lens))
        sizes = " / ".join(str(len(splits[s])) for s in SPLITS)
        rt.log(f"data     {cfg['dataset']}: {info.task}, modalities {mods}; train/valid/test {sizes}"
               + (f" (fold 0 of {folds}-fold cross-validation)" if folds else ""), always=True)
        coupling_lr = (f" (coupling logits: lr x {cfg.get('coupling_lr_scale', 1.0):g}, no decay)"
                       if cfg["model"] == "coupled-learned" else "")
        rt.log(f"training {cfg['epochs']} epochs, batch {cfg['batch_size']}, Adam lr {cfg['lr']:g} weight decay "
               f"{cfg['weight_decay']:g}{coupling_lr}, loss {cfg['loss']}, select valid {cfg['select']}; seeds "
               f"{' '.join(map(str, cfg['seeds']))}; device {ctx.device}"
               + (f", {ctx.world} processes ({ctx.backend})" if ctx.enabled else ""), always=True)
        rt.log(f"output   {out}", always=True)

    per_fold = []
    for f, fold in enumerate(fold_splits):
        base = os.path.join(out, f"fold-{f}") if folds else out
        per_seed = []
        for i, seed in enumerate(cfg["seeds"]):
            seed_dir = os.path.join(base, f"seed-{seed}")
            if ctx.is_main:
                os.makedirs(seed_dir, exist_ok=True)
            ctx.barrier()
            title = f"{cfg['model']} on {cfg['dataset']}, fold {f}, seed {seed}" if folds else ""
            run = train_seed(cfg, seed, fold, rt, SeedFolder(seed_dir, ctx.is_main), announce=(i == 0 and f == 0),
                             title=title)
            per_seed.append(run.result)
        per_fold.append(per_seed)
        if folds and ctx.is_main:
            test_mean, _ = _mean_std(per_seed, "test")
            rt.log(f"fold {f} ({f + 1} of {folds}): test " + "  ".join(f"{k} {v:.4f}" for k, v in test_mean.items()), always=True)

    if ctx.is_main:
        summary = summarize_folds(cfg, per_fold) if folds else summarize_seeds(cfg, per_seed)
        save_json(summary, os.path.join(out, "results.json"))
        rt.log(_summary_lines(cfg, per_seed, summary, out), always=True)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``coupled-mamba train``: returns the exit status (0 on success, 2 on a usage or data error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    retain_freed_memory()  # activations reused between steps without page faults (memory.py)
    try:
        ctx = DistributedContext(args.device)
    except UsageError as e:
        parser.error(str(e))
    try:
        return run_training(args, ctx, argv)
    except UsageError as e:
        return fail(parser.prog, e)
    finally:
        ctx.close()
