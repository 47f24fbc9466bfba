"""What a run writes and reads back: atomic JSON / CSV / torch files, the checkpoint and resume-state
formats (each checked on load, so a damaged or foreign file is one clear error), the learning curve."""
from __future__ import annotations

import csv
import json
import os
from typing import Any, Dict, List

import torch

from .errors import UsageError, require_module

__all__ = [
    "CHECKPOINT_FORMAT", "save_torch", "save_json", "save_csv", "load_json", "make_checkpoint",
    "load_checkpoint", "load_resume_state", "plot_curve",
]

CHECKPOINT_FORMAT = "coupled-mamba-checkpoint-1"


def save_torch(obj, path: str) -> None:
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_json(obj, path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)


def save_csv(rows: List[Dict[str, Any]], path: str) -> None:
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


def load_json(path: str, what: str) -> Any:
    """The JSON value in ``path``, or a UsageError saying the file is not ``what``."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file (expected {what})") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UsageError(f"{path}: not readable as {what} ({type(e).__name__}: {e})") from None


def _torch_load(path: str, what: str) -> Any:
    if not os.path.isfile(path):
        raise UsageError(f"{path}: no such {what}")
    try:
        # weights_only: plain tensors and Python values only, so opening a file never runs code
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, random or foreign bytes fail in many ways
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UsageError(f"{path}: not a readable {what} ({type(e).__name__}: {msg})") from None


def _tensor_dict(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and torch.is_tensor(v) for k, v in value.items())


def make_checkpoint(model, info, cfg: Dict[str, Any], seed: int, epoch: int, valid_metrics,
                    test_metrics=None) -> Dict[str, Any]:
    """A best.pt: weights, the model config that rebuilds them, the data source and the metrics."""
    return {
        "format": CHECKPOINT_FORMAT,
        "model_config": dict(model.config),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "data": info.to_dict(),
        "train_config": cfg,
        "seed": seed,
        "epoch": epoch,
        "eval_batch_size": cfg["eval_batch_size"],
        "metrics_mode": cfg.get("metrics", "default"),
        "valid_metrics": valid_metrics,
        "test_metrics": test_metrics,
    }


def load_checkpoint(path: str) -> Dict[str, Any]:
    """A best.pt checkpoint (plain tensors and Python values; loaded with weights_only=True)."""
    what = "checkpoint (expected a best.pt written by coupled-mamba train)"
    ck = _torch_load(path, "checkpoint")
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise UsageError(f"{path}: not a coupled-mamba {what}")
    if not _tensor_dict(ck.get("model")):
        raise UsageError(f"{path}: 'model' is not a dict of weight tensors; not a coupled-mamba {what}")
    if not isinstance(ck.get("model_config"), dict):
        raise UsageError(f"{path}: 'model_config' is missing or not a dict; not a coupled-mamba {what}")
    data = ck.get("data")
    if (not isinstance(data, dict) or not isinstance(data.get("source"), dict)
            or not isinstance(data.get("metrics"), str) or not isinstance(data.get("name"), str)):
        raise UsageError(f"{path}: 'data' does not describe a data source; not a coupled-mamba {what}")
    return ck


# The resume state's counters and their types; "best" and "best_loss" are None before the first epoch.
_STATE_FIELDS = dict(epoch=int, batch=int, loss_sum=(int, float), loss_count=int, best_epoch=int,
                     bad_epochs=int, stopped=bool, finished=bool, history=list, seconds=(int, float))


def load_resume_state(path: str) -> Dict[str, Any]:
    """A last.pt: {"model": weights, "optimizer": its state dict, "state": the loop's position}."""
    what = "resume state (expected a last.pt written by coupled-mamba train)"
    ck = _torch_load(path, "resume state")
    if not isinstance(ck, dict) or not {"model", "optimizer", "state"} <= set(ck):
        raise UsageError(f"{path}: not a coupled-mamba {what}")
    if not _tensor_dict(ck["model"]) or not isinstance(ck["optimizer"], dict):
        raise UsageError(f"{path}: 'model' or 'optimizer' is damaged; not a coupled-mamba {what}")
    state = ck["state"]
    if not isinstance(state, dict):
        raise UsageError(f"{path}: 'state' is not a dict; not a coupled-mamba {what}")
    for k, t in _STATE_FIELDS.items():
        v = state.get(k)
        if not isinstance(v, t) or (t is int and isinstance(v, bool)) or (t is int and v < 0):
            raise UsageError(f"{path}: state {k!r} is {v!r}, expected {getattr(t, '__name__', 'a number')}"
                             f"{' >= 0' if t is int else ''}; the {what.split(' (')[0]} is damaged")
    for k in ("best", "best_loss"):
        if k not in state or not (state[k] is None or isinstance(state[k], (int, float))):
            raise UsageError(f"{path}: state {k!r} is missing or not a number; the resume state is damaged")
    if not all(isinstance(r, dict) for r in state["history"]) or len(state["history"]) != state["epoch"]:
        raise UsageError(f"{path}: the history does not hold one row per finished epoch; the resume state "
                         "is damaged")
    return ck


def plot_curve(history: List[Dict[str, Any]], select: str, best_epoch: int, path: str, title: str) -> None:
    """Train and valid loss, and the selection metric, per epoch (a PNG)."""
    if not history:
        return
    require_module("matplotlib", "the learning curve (curve.png)")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

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

