"""Train and evaluate Coupled Mamba and the baselines: ``coupled-mamba train`` / ``evaluate``.

``python -m coupled_mamba.train [options]`` is the same as ``coupled-mamba train [options]``.
With no options it trains the default model (coupled-mean) on the embedded synthetic task.

What a run writes (``--out``, default ``runs/<dataset>-<model>``)::

    config.json            the resolved configuration
    results.json           test (and valid) metrics of every seed, their mean and std
    seed-<s>/metrics.csv   one row per epoch: train loss, valid loss, valid metrics
    seed-<s>/results.json  best epoch, its valid metrics, test metrics of the best checkpoint
    seed-<s>/curve.png     learning curve
    seed-<s>/best.pt       best checkpoint (model weights, model config, data source, metrics)
    seed-<s>/last.pt       resume state (model, optimiser, position in the epoch, history)

Model selection is on the validation split (``--select``, default MAE for regression, accuracy
for classification; ties go to the lower validation loss); the test metrics are those of the
selected checkpoint.

Determinism and ``--resume``: the order of the training samples is a function of (seed, epoch),
and the random stream (dropout) is reseeded from (seed, epoch, batch, rank) before every batch, so
a run that is killed at any point and resumed from its last checkpoint repeats exactly the steps
it would have taken, and ends with the same weights and metrics as an uninterrupted run.

Multi-process data-parallel training: launch with torchrun, e.g.
``torchrun --standalone --nproc_per_node 2 -m coupled_mamba.train ...`` (gloo on CPU, nccl on
GPU). Each global batch of ``--batch-size`` samples is split between the processes and the loss
is normalised by the global batch size, so the update equals the single-process one.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from . import metrics as metrics_mod
from .data import DATASETS, SPLITS, MultimodalDataset, load_data, modality_names
from .modules import MODEL_KINDS, build_model

__all__ = [
    "main", "evaluate_main", "build_parser", "build_evaluate_parser", "resolve_config",
    "evaluate_checkpoint", "load_checkpoint", "predict", "DATASET_DEFAULTS", "PAPER_DEFAULTS",
    "summarize_main", "summarize_runs",
]

CHECKPOINT_FORMAT = "coupled-mamba-checkpoint-1"

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
}
# Model-selection metric per metric family (valid split).
SELECT_DEFAULTS = {"mosi": "MAE", "sims": "MAE", "classification": "Acc", "sentiment3": "Mult_acc_3"}
MODEL_OPTIONS = ("d_model", "n_layers", "d_state", "d_conv", "expand", "dt_rank", "seq_len", "align",
                 "dropout", "n_heads")
# Options that may change when a run is resumed (they do not change the result).
RUNTIME_KEYS = ("device", "threads", "quiet", "out", "resume", "overwrite", "checkpoint_every")


class UsageError(Exception):
    """A problem with the command line or the data that is reported without a traceback."""


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def build_parser(prog: str = "coupled-mamba train") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Train Coupled Mamba (or a baseline) on multimodal sequence data; select on the "
                    "validation split, report test metrics. With no options: the default model on the "
                    "embedded synthetic task.",
    )
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=DATASETS, default="synthetic",
                   help="synthetic (embedded, default), an MMSA feature pickle (mosi, mosei, sims, simsv2; "
                        "give --data), or basicmotions (needs sktime)")
    g.add_argument("--data", metavar="PATH", help="the MMSA feature pickle, e.g. unaligned_50.pkl")
    g.add_argument("--task", choices=("regression", "classification"),
                   help="regression (default) or 3-class classification (negative/neutral/positive)")
    g.add_argument("--modalities", nargs="+", metavar="NAME",
                   help="use only these modalities (synthetic: a b c; MMSA: text audio vision; "
                        "basicmotions: accelerometer gyroscope)")
    g.add_argument("--data-seed", type=int, default=0, metavar="SEED",
                   help="seed of the synthetic data / BasicMotions split")
    g.add_argument("--n-train", type=int, metavar="N", help="synthetic: training samples (default 2000)")
    g.add_argument("--n-valid", type=int, metavar="N", help="synthetic: validation samples (default 500)")
    g.add_argument("--n-test", type=int, metavar="N", help="synthetic: test samples (default 1000)")

    g = p.add_argument_group("model (defaults: the paper's for real data, smaller for synthetic)")
    g.add_argument("--model", choices=MODEL_KINDS, default="coupled-mean",
                   help="coupled-<coupling> or a baseline (default coupled-mean)")
    g.add_argument("--d-model", type=int, metavar="N", help="width (default 128; synthetic 64, basicmotions 32)")
    g.add_argument("--n-layers", type=int, metavar="N", help="layers (default 3; synthetic and basicmotions 2)")
    g.add_argument("--d-state", type=int, metavar="N",
                   help="SSM state size (default 64; synthetic and basicmotions 16)")
    g.add_argument("--d-conv", type=int, metavar="N", help="causal conv width (default 4)")
    g.add_argument("--expand", type=int, metavar="N", help="inner width / d_model (default 2)")
    g.add_argument("--dt-rank", type=int, metavar="N", help="default ceil(d_state / 8), the paper's d_state/8")
    g.add_argument("--seq-len", type=int, metavar="N", help="common length after alignment (default 50; synthetic 32)")
    g.add_argument("--align", choices=("resample", "pad"), help="resample each sample's valid part to --seq-len "
                   "bins (default) or pad to a common length with masks")
    g.add_argument("--dropout", type=float, metavar="P", help="default 0.1")
    g.add_argument("--n-heads", type=int, metavar="N", help="attention baselines (default 4)")

    g = p.add_argument_group("optimisation (defaults: the paper's)")
    g.add_argument("--epochs", type=int, metavar="N",
                   help="default: 150 (real data), 10 (synthetic), 60 (basicmotions)")
    g.add_argument("--batch-size", type=int, metavar="N",
                   help="default: mosei 1024, sims 128, simsv2 256, mosi 128, synthetic 64, basicmotions 8")
    g.add_argument("--lr", type=float, default=PAPER_DEFAULTS["lr"], metavar="LR", help="Adam learning rate (5e-4)")
    g.add_argument("--weight-decay", type=float, default=PAPER_DEFAULTS["weight_decay"], metavar="WD",
                   help="Adam weight decay (5e-4)")
    g.add_argument("--loss", choices=("l1", "mse", "ce"), help="default: l1 (regression), ce (classification)")
    g.add_argument("--grad-clip", type=float, default=0.0, metavar="NORM", help="clip the gradient norm (0: off)")
    g.add_argument("--patience", type=int, default=0, metavar="N",
                   help="stop after this many epochs without improvement (0: off)")
    g.add_argument("--select", metavar="METRIC",
                   help="validation metric for model selection (default MAE, or accuracy for classification)")
    g.add_argument("--eval-batch-size", type=int, default=256, metavar="N", help="batch size for evaluation (256)")

    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=0, metavar="SEED", help="training seed (default 0)")
    g.add_argument("--seeds", type=int, nargs="+", metavar="SEED",
                   help="several training seeds; reports their mean and standard deviation")
    g.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    g.add_argument("--threads", type=int, metavar="N", help="torch CPU threads")
    g.add_argument("--out", metavar="DIR", help="output folder (default runs/<dataset>-<model>, -2, -3... if taken)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out (default: the latest "
                   "runs/<dataset>-<model>*) from its last checkpoint")
    g.add_argument("--overwrite", action="store_true", help="delete a previous run in --out and start again")
    g.add_argument("--checkpoint-every", type=int, default=0, metavar="N",
                   help="also save the resume state every N batches (0: at the end of each epoch only)")
    g.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    return p


def resolve_config(args: argparse.Namespace) -> Dict[str, Any]:
    """Fill the dataset-dependent defaults; returns a JSON-able dict (the run's config.json)."""
    ds = args.dataset
    d = DATASET_DEFAULTS[ds]
    task = args.task or ("classification" if ds == "basicmotions" else "regression")
    if ds == "basicmotions" and task != "classification":
        raise UsageError("basicmotions is a classification task")
    mods = list(args.modalities) if args.modalities else modality_names(ds)
    known = modality_names(ds)
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
    elif ds == "basicmotions":
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
    epochs = args.epochs if args.epochs is not None else d["epochs"]
    batch = args.batch_size if args.batch_size is not None else d["batch_size"]
    for name, v in (("--epochs", epochs), ("--batch-size", batch), ("--eval-batch-size", args.eval_batch_size)):
        if v < 1:
            raise UsageError(f"{name} must be at least 1")
    return dict(
        dataset=ds,
        data=os.path.abspath(args.data) if args.data else None,
        task=task,
        modalities=mods,
        data_options=data_options,
        model=args.model,
        model_options=model_options,
        epochs=epochs,
        batch_size=batch,
        eval_batch_size=args.eval_batch_size,
        optimizer="adam",
        lr=args.lr,
        weight_decay=args.weight_decay,
        loss=loss,
        grad_clip=args.grad_clip,
        patience=args.patience,
        select=args.select,  # resolved once the metric family is known
        seeds=seeds,
        checkpoint_every=args.checkpoint_every,
    )


# --------------------------------------------------------------------------------------------
# Distributed context
# --------------------------------------------------------------------------------------------


def _resolve_device(arg: str, local_rank: int, world: int) -> torch.device:
    if arg == "auto":
        arg = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(arg)
    except RuntimeError as e:
        raise UsageError(f"--device {arg}: {e}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {arg}: CUDA is not available")
        if dev.index is None:
            dev = torch.device("cuda", local_rank if world > 1 else torch.cuda.current_device())
    return dev


class _Dist:
    """Process-group bookkeeping; a no-op in a single process."""

    def __init__(self, device_arg: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world > 1
        self.device = _resolve_device(device_arg, self.local_rank, self.world)
        self._owns = False
        if self.enabled and not dist.is_initialized():
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            dist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo")
            self._owns = True

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def backend(self) -> str:
        return dist.get_backend() if self.enabled else "none"

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sum(self, values: Sequence[float]) -> List[float]:
        if not self.enabled:
            return [float(v) for v in values]
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def gather(self, obj) -> list:
        if not self.enabled:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj):
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self._owns and dist.is_initialized():
            dist.destroy_process_group()


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _mix(*values: int) -> int:
    """A well-mixed 63-bit seed from a tuple of non-negative ints."""
    state = np.random.SeedSequence([int(v) % (2 ** 32) for v in values]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def _save_torch(obj, path: str) -> None:
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _save_json(obj, path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)


def _save_csv(rows: List[Dict[str, Any]], path: str) -> None:
    if not rows:
        return
    keys: List[str] = []
    for r in rows:
        for k in r:
            if k not in keys:
                keys.append(k)
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow(r)
    os.replace(tmp, path)


def _loss_per_sample(kind: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if kind == "ce":
        return F.cross_entropy(out.float(), y, reduction="none")
    out = out.reshape(-1).float()
    if kind == "l1":
        return (out - y).abs()
    return (out - y) ** 2


def _loss_value(kind: str, preds: np.ndarray, labels: np.ndarray) -> float:
    return float(_loss_per_sample(kind, torch.from_numpy(preds), torch.from_numpy(labels)).double().mean())


def _to(batch, device):
    xs, ls, y = batch
    return [x.to(device) for x in xs], [ln.to(device) for ln in ls], y.to(device)


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


@torch.no_grad()
def predict(model, ds: MultimodalDataset, batch_size: int, device, indices=None) -> Tuple[np.ndarray, np.ndarray]:
    """Model outputs (regression (N,), classification logits (N, C)) and labels, in order."""
    model = _unwrap(model)
    was_training = model.training
    model.eval()
    idx = torch.arange(len(ds)) if indices is None else torch.as_tensor(indices, dtype=torch.int64)
    outs, labels = [], []
    for s in range(0, len(idx), batch_size):
        xs, ls, y = _to(ds.batch(idx[s:s + batch_size]), device)
        out = model(xs, ls).float()
        if out.dim() == 2 and out.shape[1] == 1 and model.config.get("task") != "classification":
            out = out[:, 0]
        outs.append(out.cpu())
        labels.append(y.cpu())
    model.train(was_training)
    if not outs:
        return np.zeros((0,), np.float32), ds.labels[:0].numpy()
    return torch.cat(outs).numpy(), torch.cat(labels).numpy()


def _predict_sharded(model, ds, batch_size, ctx: _Dist):
    """predict() over all samples, each process doing its share; every process gets the result."""
    if not ctx.enabled:
        return predict(model, ds, batch_size, ctx.device)
    mine = np.arange(ctx.rank, len(ds), ctx.world)
    p, y = predict(model, ds, batch_size, ctx.device, mine)
    parts = ctx.gather((mine, p, y))
    order = np.concatenate([q[0] for q in parts])
    preds = np.concatenate([q[1] for q in parts])
    labels = np.concatenate([q[2] for q in parts])
    inv = np.argsort(order, kind="stable")
    return preds[inv], labels[inv]


def _metric_names(family: str, num_classes: int) -> List[str]:
    if family in ("mosi", "sims"):
        p, y = np.array([0.5, -0.5, 0.1]), np.array([0.4, -0.2, 0.0])
    else:
        p, y = np.eye(max(num_classes, 3))[[0, 1, 2]][:, :max(num_classes, 3)], np.array([0, 1, 2])
    return list(metrics_mod.compute_metrics(family, p, y).keys())


def _format_metrics(m: Dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.4f}" for k, v in m.items())


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


def load_checkpoint(path: str) -> Dict[str, Any]:
    """A best.pt checkpoint (plain tensors and Python values; loaded with weights_only=True)."""
    if not os.path.exists(path):
        raise UsageError(f"{path}: no such checkpoint")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UsageError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise UsageError(f"{path}: not a coupled-mamba checkpoint (expected a best.pt written by coupled-mamba train)")
    return ck


def _checkpoint(model, info, cfg, seed, epoch, valid_metrics, test_metrics=None) -> Dict[str, Any]:
    m = _unwrap(model)
    return {
        "format": CHECKPOINT_FORMAT,
        "model_config": dict(m.config),
        "model": {k: v.detach().cpu() for k, v in m.state_dict().items()},
        "data": info.to_dict(),
        "train_config": cfg,
        "seed": seed,
        "epoch": epoch,
        "eval_batch_size": cfg["eval_batch_size"],
        "valid_metrics": valid_metrics,
        "test_metrics": test_metrics,
    }


def _plot_curve(history: List[Dict[str, Any]], select: str, best_epoch: int, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not history:
        return
    ep = [r["epoch"] for r in history]
    fig = Figure(figsize=(9, 3.6))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(ep, [r["train_loss"] for r in history], label="train loss", marker=".")
    ax1.plot(ep, [r["valid_loss"] for r in history], label="valid loss", marker=".")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.legend()
    key = f"valid_{select}"
    if key in history[0]:
        ax2.plot(ep, [r[key] for r in history], marker=".", color="C2")
        ax2.set_ylabel(f"valid {select}")
    ax2.axvline(best_epoch, color="gray", linestyle="--", label=f"best epoch {best_epoch}")
    ax2.set_xlabel("epoch")
    ax2.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


# --------------------------------------------------------------------------------------------
# Training one seed
# --------------------------------------------------------------------------------------------


@dataclass
class _Runtime:
    ctx: _Dist
    quiet: bool
    resume: bool
    checkpoint_every: int
    progress: bool


def _log(rt: _Runtime, msg: str, always: bool = False) -> None:
    if rt.ctx.main and (always or not rt.quiet):
        if rt.progress:
            from tqdm import tqdm

            tqdm.write(msg)
        else:
            print(msg, flush=True)


def _train_seed(cfg: Dict[str, Any], seed: int, splits: Dict[str, MultimodalDataset], seed_dir: str,
                rt: _Runtime, announce: bool) -> Optional[Dict[str, Any]]:
    ctx = rt.ctx
    device = ctx.device
    train, valid, test = splits["train"], splits["valid"], splits["test"]
    info = train.info
    family, select = info.metrics, cfg["select"]
    lower = metrics_mod.lower_is_better(select)
    last_path, best_path = os.path.join(seed_dir, "last.pt"), os.path.join(seed_dir, "best.pt")
    results_path = os.path.join(seed_dir, "results.json")

    torch.manual_seed(seed)
    np.random.seed(seed % (2 ** 32))
    model = build_model(cfg["model"], train.input_dims, task=info.task, num_classes=info.num_classes,
                        **cfg["model_options"])
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    if announce:
        opts = ", ".join(f"{k} {v}" for k, v in model.config.items()
                         if k not in ("kind", "input_dims", "task", "num_classes"))
        _log(rt, f"model    {cfg['model']}: {opts}; {_params(model):,} parameters")

    state: Dict[str, Any] = dict(epoch=0, batch=0, loss_sum=0.0, loss_count=0, best=None, best_loss=None,
                                 best_epoch=0, bad_epochs=0, stopped=False, finished=False, history=[], seconds=0.0)
    if rt.resume and os.path.exists(last_path):
        ck = torch.load(last_path, map_location="cpu", weights_only=True)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        state = ck["state"]
        if not ctx.main:  # the saved partial sums are global; count them once
            state["loss_sum"], state["loss_count"] = 0.0, 0
        if state["finished"] and os.path.exists(results_path):
            with open(results_path) as f:
                res = json.load(f)
            _log(rt, f"seed {seed}: already finished, test {_format_metrics(res['test'])}")
            return res
        where = f"epoch {state['epoch'] + 1}" + (f", batch {state['batch']}" if state["batch"] else "")
        _log(rt, f"seed {seed}: resuming from {last_path} at {where}")

    def save_last():
        if ctx.main:
            _save_torch({"model": {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()},
                         "optimizer": opt.state_dict(), "state": state}, last_path)

    train_model = model
    if ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        train_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    n, B, E = len(train), cfg["batch_size"], cfg["epochs"]
    n_batches = math.ceil(n / B)
    if ctx.enabled and n - (n_batches - 1) * B < ctx.world:
        n_batches -= 1  # a last global batch too small to give every process a sample
    if n_batches < 1:
        raise UsageError(f"{n} training samples cannot be split between {ctx.world} processes")

    bar = None
    if rt.progress:
        from tqdm import tqdm

        bar = tqdm(total=E, initial=state["epoch"], desc=f"seed {seed}", unit="epoch", dynamic_ncols=True)
    t_start = time.time() - state["seconds"]
    while state["epoch"] < E and not state["stopped"]:
        epoch = state["epoch"]
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(_mix(seed, epoch)))
        train_model.train()
        inner = None
        if rt.progress:
            from tqdm import tqdm

            inner = tqdm(total=n_batches, initial=state["batch"], desc=f"epoch {epoch + 1}/{E}", unit="batch",
                         leave=False, dynamic_ncols=True)
        for b in range(state["batch"], n_batches):
            torch.manual_seed(_mix(seed, epoch, b, ctx.rank))
            idx = perm[b * B:(b + 1) * B]
            part = idx[ctx.rank::ctx.world]
            xs, ls, y = _to(train.batch(part), device)
            out = train_model(xs, ls)
            per = _loss_per_sample(cfg["loss"], out, y)
            loss = per.sum() * (ctx.world / len(idx))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg["grad_clip"] > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
            opt.step()
            state["loss_sum"] += float(per.detach().double().sum())
            state["loss_count"] += int(len(part))
            state["batch"] = b + 1
            if inner is not None:
                inner.update(1)
                inner.set_postfix(loss=f"{state['loss_sum'] / max(state['loss_count'], 1):.4f}")
            if rt.checkpoint_every and state["batch"] % rt.checkpoint_every == 0 and state["batch"] < n_batches:
                s, c = ctx.sum([state["loss_sum"], state["loss_count"]])
                mine = (state["loss_sum"], state["loss_count"])
                state["loss_sum"], state["loss_count"] = s, int(c)
                state["seconds"] = time.time() - t_start
                save_last()
                state["loss_sum"], state["loss_count"] = mine
        if inner is not None:
            inner.close()

        loss_sum, loss_count = ctx.sum([state["loss_sum"], state["loss_count"]])
        vp, vy = _predict_sharded(model, valid, cfg["eval_batch_size"], ctx)
        vm = metrics_mod.compute_metrics(family, vp, vy)
        vloss = _loss_value(cfg["loss"], vp, vy)
        vm_sel = {**vm, "Loss": round(vloss, 4)}
        row = {"epoch": epoch + 1, "train_loss": round(loss_sum / max(loss_count, 1), 6),
               "valid_loss": round(vloss, 6), **{f"valid_{k}": v for k, v in vm.items()}}
        value = vm_sel[select]
        best = state["best"]
        # better on the selection metric, or as good with a lower validation loss (ties are
        # common for accuracy on small validation sets)
        improved = (best is None or (value < best if lower else value > best)
                    or (value == best and vloss < state["best_loss"]))
        state["epoch"], state["batch"], state["loss_sum"], state["loss_count"] = epoch + 1, 0, 0.0, 0
        state["seconds"] = time.time() - t_start
        row["seconds"] = round(state["seconds"], 2)
        state["history"].append(row)
        if improved:
            state["best"], state["best_epoch"], state["bad_epochs"] = value, epoch + 1, 0
            state["best_loss"] = vloss
            if ctx.main:
                _save_torch(_checkpoint(model, info, cfg, seed, epoch + 1, vm), best_path)
        else:
            state["bad_epochs"] += 1
            if cfg["patience"] and state["bad_epochs"] >= cfg["patience"]:
                state["stopped"] = True
        save_last()
        if ctx.main:
            _save_csv(state["history"], os.path.join(seed_dir, "metrics.csv"))
        msg = (f"epoch {epoch + 1:3d}/{E}  train_loss {row['train_loss']:.4f}  valid_loss {vloss:.4f}  "
               f"valid {select} {value:.4f}{'  *' if improved else ''}")
        if bar is not None:
            bar.update(1)
            bar.set_postfix(valid=f"{select} {value:.4f}", best=f"{state['best']:.4f}")
        elif not rt.quiet:
            _log(rt, msg)
        if state["stopped"]:
            _log(rt, f"seed {seed}: no improvement for {cfg['patience']} epochs, stopping")
    if bar is not None:
        bar.close()

    # Final evaluation: the selected checkpoint on valid and test, in one process, exactly as
    # `coupled-mamba evaluate` does it.
    ctx.barrier()
    result = None
    if ctx.main:
        ck = load_checkpoint(best_path)
        _unwrap(model).load_state_dict(ck["model"])
        bs = cfg["eval_batch_size"]
        vm = metrics_mod.compute_metrics(family, *predict(model, valid, bs, device))
        tm = metrics_mod.compute_metrics(family, *predict(model, test, bs, device))
        ck["valid_metrics"], ck["test_metrics"] = vm, tm
        _save_torch(ck, best_path)
        result = {
            "seed": seed,
            "best_epoch": state["best_epoch"],
            "epochs_run": state["epoch"],
            "select": select,
            "valid": vm,
            "test": tm,
            "train_seconds": round(state["seconds"], 2),
            "model": ck["model_config"],
            "parameters": _params(model),
            "checkpoint": "best.pt",
        }
        _save_json(result, results_path)
        try:
            _plot_curve(state["history"], select, state["best_epoch"], os.path.join(seed_dir, "curve.png"),
                        f"{cfg['model']} on {cfg['dataset']}, seed {seed}")
        except Exception as e:  # a plotting problem must not lose a finished run
            _log(rt, f"warning: could not draw the learning curve: {e}", always=True)
        state["finished"] = True
        save_last()
        if len(cfg["seeds"]) > 1:
            _log(rt, f"seed {seed}: best epoch {state['best_epoch']} (valid {select} {state['best']:.4f}); "
                     f"test {_format_metrics(tm)}", always=True)
    ctx.barrier()
    return result


# --------------------------------------------------------------------------------------------
# The run: seeds, output folder, summary
# --------------------------------------------------------------------------------------------


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


def _summary(per_seed: List[Dict[str, Any]], split: str) -> Tuple[Dict[str, float], Dict[str, float]]:
    keys = list(per_seed[0][split].keys())
    mean, std = {}, {}
    for k in keys:
        v = np.array([r[split][k] for r in per_seed], dtype=np.float64)
        mean[k] = round(float(v.mean()), 4)
        std[k] = round(float(v.std(ddof=1)), 4) if len(v) > 1 else 0.0
    return mean, std


def _explicit_options(argv: Optional[Sequence[str]]) -> List[str]:
    """The destinations of the options given on the command line (not defaulted)."""
    p = build_parser()
    for a in p._actions:
        a.default = argparse.SUPPRESS
    ns, _ = p.parse_known_args(sys.argv[1:] if argv is None else list(argv))
    return sorted(vars(ns))


def _prepare_out(args, cfg, argv) -> Tuple[str, Dict[str, Any]]:
    """The output folder, and the config to use (a resumed run keeps its saved one)."""
    out = args.out or _default_out(cfg, args.resume)
    cfg_path = os.path.join(out, "config.json")
    if os.path.exists(cfg_path):
        if args.resume:
            with open(cfg_path) as f:
                saved = json.load(f)
            given = _explicit_options(argv)
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


def _run(args: argparse.Namespace, ctx: _Dist, argv: Optional[Sequence[str]] = None) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = resolve_config(args)

    out, err = None, None
    if ctx.main:
        try:
            out, cfg = _prepare_out(args, cfg, argv)
        except UsageError as e:
            err = str(e)
    out, cfg, err = ctx.broadcast((out, cfg, err))
    if err:
        raise UsageError(err)

    try:
        splits = load_data(cfg["dataset"], path=cfg["data"], task=cfg["task"], modalities=cfg["modalities"],
                           **cfg["data_options"])
    except (ValueError, FileNotFoundError, ImportError) as e:
        raise UsageError(str(e)) from None
    info = splits["train"].info
    names = _metric_names(info.metrics, info.num_classes)
    if cfg["select"] is None:
        cfg["select"] = SELECT_DEFAULTS[info.metrics]
    if cfg["select"] not in names + ["Loss"]:
        raise UsageError(f"--select {cfg['select']}: expected one of {', '.join(names + ['Loss'])}")

    progress = (not args.quiet) and ctx.main and sys.stderr.isatty()
    rt = _Runtime(ctx, args.quiet, args.resume, cfg["checkpoint_every"], progress)
    if ctx.main:
        os.makedirs(out, exist_ok=True)
        _save_json(cfg, os.path.join(out, "config.json"))
        mods = ", ".join(f"{m} ({d} features x {L} steps)" for m, d, L in
                         zip(info.modalities, splits["train"].input_dims, splits["train"].seq_lens))
        sizes = " / ".join(str(len(splits[s])) for s in SPLITS)
        _log(rt, f"data     {cfg['dataset']}: {info.task}, modalities {mods}; train/valid/test {sizes}", always=True)
        _log(rt, f"training {cfg['epochs']} epochs, batch {cfg['batch_size']}, Adam lr {cfg['lr']:g} weight decay "
                 f"{cfg['weight_decay']:g}, loss {cfg['loss']}, select valid {cfg['select']}; seeds "
                 f"{' '.join(map(str, cfg['seeds']))}; device {ctx.device}"
                 + (f", {ctx.world} processes ({ctx.backend})" if ctx.enabled else ""), always=True)
        _log(rt, f"output   {out}", always=True)

    per_seed = []
    for i, seed in enumerate(cfg["seeds"]):
        seed_dir = os.path.join(out, f"seed-{seed}")
        if ctx.main:
            os.makedirs(seed_dir, exist_ok=True)
        ctx.barrier()
        res = _train_seed(cfg, seed, splits, seed_dir, rt, announce=(i == 0))
        per_seed.append(res)

    if ctx.main:
        test_mean, test_std = _summary(per_seed, "test")
        valid_mean, valid_std = _summary(per_seed, "valid")
        summary = {
            "dataset": cfg["dataset"],
            "model": cfg["model"],
            "seeds": cfg["seeds"],
            "test": {"mean": test_mean, "std": test_std},
            "valid": {"mean": valid_mean, "std": valid_std},
            "std": "sample standard deviation over seeds (n - 1); 0 for one seed",
            "per_seed": {str(r["seed"]): {"best_epoch": r["best_epoch"], "valid": r["valid"], "test": r["test"]}
                         for r in per_seed},
            "config": cfg,
        }
        _save_json(summary, os.path.join(out, "results.json"))
        width = max(len(k) for k in test_mean)
        lines = [f"test metrics of {cfg['model']} on {cfg['dataset']}"
                 + (f", mean ± std over seeds {' '.join(map(str, cfg['seeds']))}:" if len(per_seed) > 1 else
                    f" (seed {cfg['seeds'][0]}, best epoch {per_seed[0]['best_epoch']}):")]
        for k in test_mean:
            spread = f" ± {test_std[k]:.4f}" if len(per_seed) > 1 else ""
            lines.append(f"  {k:<{width}}  {test_mean[k]:.4f}{spread}")
        lines.append(f"results in {os.path.join(out, 'results.json')}")
        _log(rt, "\n".join(lines), always=True)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``coupled-mamba train``: returns the exit status (0 on success, 2 on a usage or data error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        ctx = _Dist(args.device)
    except UsageError as e:
        parser.error(str(e))
    try:
        return _run(args, ctx, argv)
    except UsageError as e:
        print(f"coupled-mamba train: error: {e}", file=sys.stderr)
        return 2
    finally:
        ctx.close()


# --------------------------------------------------------------------------------------------
# Evaluation of a checkpoint
# --------------------------------------------------------------------------------------------


def evaluate_checkpoint(checkpoint: str, data: Optional[str] = None, split: str = "test", device: str = "cpu",
                        batch_size: Optional[int] = None) -> Dict[str, Any]:
    """Metrics of a best.pt checkpoint on ``split`` of its data (``data``: a new path of the file).

    Returns {"metrics": ..., "recorded": the metrics stored at training time (or None),
    "data": the data source, "model": the model config}.
    """
    if split not in SPLITS:
        raise UsageError(f"split: expected one of {SPLITS}, got {split!r}")
    ck = load_checkpoint(checkpoint)
    info = ck["data"]
    source = dict(info["source"])
    if data:
        if "path" not in source:
            raise UsageError(f"--data: the {info['name']} dataset is not read from a file")
        source["path"] = os.path.abspath(data)
    try:
        splits = load_data(**source)
    except (ValueError, FileNotFoundError, ImportError) as e:
        raise UsageError(str(e)) from None
    ds = splits[split]
    if ds.input_dims != list(ck["model_config"]["input_dims"]):
        raise UsageError(f"the data has feature widths {ds.input_dims}, the model expects "
                         f"{ck['model_config']['input_dims']}")
    dev = _resolve_device(device, 0, 1)
    model = build_model(**ck["model_config"])
    model.load_state_dict(ck["model"])
    model.to(dev)
    bs = batch_size or ck.get("eval_batch_size") or 256
    metrics = metrics_mod.compute_metrics(info["metrics"], *predict(model, ds, bs, dev))
    return {"metrics": metrics, "recorded": ck.get(f"{split}_metrics"), "data": source,
            "model": ck["model_config"], "epoch": ck.get("epoch"), "seed": ck.get("seed")}


def build_evaluate_parser(prog: str = "coupled-mamba evaluate") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description="Evaluate a checkpoint (best.pt) written by coupled-mamba train on its data.")
    p.add_argument("checkpoint", help="a best.pt file")
    p.add_argument("--data", metavar="PATH", help="the data file, if it moved (MMSA datasets)")
    p.add_argument("--split", choices=SPLITS, default="test")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, help="default: the one used in training")
    p.add_argument("--threads", type=int)
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
        print(f"coupled-mamba evaluate: error: {e}", file=sys.stderr)
        return 2
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
            diff = ", ".join(f"{k} {rec.get(k)} -> {v}" for k, v in m.items() if rec.get(k) != v)
            print(f"differs from the metrics recorded at training time: {diff}")
    if args.json:
        _save_json({"split": args.split, "metrics": m, "recorded": rec, "data": r["data"]}, args.json)
    return 0


# --------------------------------------------------------------------------------------------
# Summary table of several runs
# --------------------------------------------------------------------------------------------


def summarize_runs(run_dirs: Sequence[str], split: str = "test") -> str:
    """A markdown table of the mean ± std metrics of finished runs (their results.json)."""
    rows, keys = [], None
    for d in run_dirs:
        path = os.path.join(d, "results.json")
        if not os.path.exists(path):
            raise UsageError(f"{d}: no results.json (is it a finished coupled-mamba train run?)")
        r = _json_load(path)
        if split not in r or "mean" not in r[split]:
            raise UsageError(f"{path}: not a run summary")
        keys = keys or list(r[split]["mean"].keys())
        rows.append(r)
    if not rows:
        raise UsageError("give at least one run folder")
    multi = any(len(r["seeds"]) > 1 for r in rows)
    head = ["model", "dataset", "seeds"] + keys
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * len(keys)) + "|"]
    for r in rows:
        m, sd = r[split]["mean"], r[split]["std"]
        cells = [f"{m[k]:.4f} ± {sd[k]:.4f}" if multi else f"{m[k]:.4f}" for k in keys]
        lines.append("| " + " | ".join([r["model"], r["dataset"], " ".join(map(str, r["seeds"]))] + cells) + " |")
    return "\n".join(lines)


def _json_load(path: str):
    with open(path) as f:
        return json.load(f)


def summarize_main(argv: Optional[Sequence[str]] = None) -> int:
    """``coupled-mamba summarize RUN_DIR...``: prints a markdown table of the runs' metrics."""
    p = argparse.ArgumentParser(prog="coupled-mamba summarize",
                                description="Markdown table (mean ± std over seeds) of finished runs.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--split", choices=("test", "valid"), default="test")
    args = p.parse_args(argv)
    try:
        print(summarize_runs(args.runs, args.split))
    except UsageError as e:
        print(f"coupled-mamba summarize: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
