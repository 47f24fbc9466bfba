"""Training one seed: losses, the per-epoch loop with model selection on the validation split,
prediction (sharded over processes), and the final evaluation of the selected weights.

Determinism: the order of the training samples is a function of (seed, epoch), and the random
stream (dropout) is reseeded from (seed, epoch, batch, rank) before every batch, so a run resumed
from any saved state repeats exactly the steps it would have taken.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .. import metrics as metrics_mod
from ..data import MultimodalDataset
from ..modules import build_model
from .artifacts import make_checkpoint
from .distributed import DistributedContext
from .errors import UsageError, require_module
from .divergence import divergence_message
from .optim import build_optimizer, learned_coupling

__all__ = ["Runtime", "SeedRun", "train_seed", "predict", "predict_sharded", "loss_per_sample", "mix_seed"]


def mix_seed(*values: int) -> int:
    """A well-mixed 63-bit seed from a tuple of ints."""
    state = np.random.SeedSequence([int(v) % (2 ** 32) for v in values]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def loss_per_sample(kind: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``ce`` (classification), ``l1`` or ``mse`` (regression), one value per sample."""
    if kind == "ce":
        return F.cross_entropy(out.float(), y, reduction="none")
    out = out.reshape(-1).float()
    if kind == "l1":
        return (out - y).abs()
    return (out - y) ** 2


def _loss_value(kind: str, preds: np.ndarray, labels: np.ndarray) -> float:
    return float(loss_per_sample(kind, torch.from_numpy(preds), torch.from_numpy(labels)).double().mean())


def _to(batch, device):
    xs, ls, y = batch
    return [x.to(device) for x in xs], [ln.to(device) for ln in ls], y.to(device)


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def format_metrics(m: Dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.4f}" for k, v in m.items())


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


def predict_sharded(model, ds: MultimodalDataset, batch_size: int, ctx: DistributedContext):
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


@dataclass
class Runtime:
    """How a run executes and reports: processes and device, output, mid-epoch resume states."""

    ctx: DistributedContext
    quiet: bool = False
    progress: bool = False  # tqdm bars (on a terminal)
    resume: bool = False
    checkpoint_every: int = 0  # also save the resume state every N batches

    def log(self, msg: str, always: bool = False) -> None:
        if self.ctx.is_main and (always or not self.quiet):
            if self.progress:
                require_module("tqdm", "progress bars").tqdm.write(msg)
            else:
                print(msg, flush=True)


@dataclass
class SeedRun:
    """A trained seed: the model holding the selected weights, one history row per epoch, and the
    result (best epoch, valid and test metrics, ...; None on processes other than the main one)."""

    model: torch.nn.Module
    history: List[Dict[str, Any]]
    result: Optional[Dict[str, Any]]


def _new_state() -> Dict[str, Any]:
    return dict(epoch=0, batch=0, loss_sum=0.0, loss_count=0, best=None, best_loss=None, best_epoch=0,
                bad_epochs=0, stopped=False, finished=False, history=[], seconds=0.0)


def _restore(model, opt, saved: Dict[str, Any], where: str) -> None:
    """Load a resume state's weights and optimiser state, refusing ones that do not fit the model."""
    try:
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"{where}: does not fit this run's model ({first})") from None
    for p, st in opt.state.items():
        for k, v in st.items():
            if torch.is_tensor(v) and v.dim() > 0 and v.shape != p.shape:
                raise UsageError(f"{where}: optimiser state {k!r} has shape {tuple(v.shape)} for a parameter "
                                 f"of shape {tuple(p.shape)}; the resume state is damaged")


def _batches_per_epoch(n: int, batch: int, ctx: DistributedContext) -> int:
    n_batches = math.ceil(n / batch)
    if ctx.enabled and n - (n_batches - 1) * batch < ctx.world:
        n_batches -= 1  # a last global batch too small to give every process a sample
    if n_batches < 1:
        raise UsageError(f"{n} training samples cannot be split between {ctx.world} processes")
    return n_batches


class _SeedTraining:
    """One seed's model, optimiser and loop state, and the steps of its training."""

    def __init__(self, cfg: Dict[str, Any], seed: int, splits: Dict[str, MultimodalDataset], rt: Runtime, store):
        self.cfg, self.seed, self.splits, self.rt, self.store = cfg, seed, splits, rt, store
        self.ctx = rt.ctx
        info = splits["train"].info
        self.family, self.select, self.mode = info.metrics, cfg["select"], cfg.get("metrics", "default")
        self.lower = metrics_mod.lower_is_better(self.select)
        torch.manual_seed(seed)
        np.random.seed(seed % (2 ** 32))
        try:
            self.model = build_model(cfg["model"], splits["train"].input_dims, task=info.task,
                                     num_classes=info.num_classes, **cfg["model_options"])
        except (TypeError, ValueError) as e:
            raise UsageError(f"model {cfg['model']}: {e}") from None
        self.model.to(self.ctx.device)
        self.opt = build_optimizer(self.model, cfg["lr"], cfg["weight_decay"], cfg.get("coupling_lr_scale", 1.0))
        self.state = _new_state()
        self.train_model = self.model
        self.n_batches = _batches_per_epoch(len(splits["train"]), cfg["batch_size"], self.ctx)

    def describe_model(self) -> str:
        opts = ", ".join(f"{k} {v}" for k, v in self.model.config.items()
                         if k not in ("kind", "input_dims", "task", "num_classes"))
        return f"model    {self.cfg['model']}: {opts}; {parameter_count(self.model):,} parameters"

    def resume(self) -> Optional[Dict[str, Any]]:
        """Continue from the store's resume state, if any; the result if that seed had finished."""
        saved = self.store.load_resume()
        if saved is None:
            return None
        _restore(self.model, self.opt, saved, self.store.last_path)
        self.state = state = saved["state"]
        if not self.ctx.is_main:  # the saved partial sums are global; count them once
            state["loss_sum"], state["loss_count"] = 0.0, 0
        if state["finished"]:
            res = self.store.finished_result()
            if res is not None:
                self.rt.log(f"seed {self.seed}: already finished, test {format_metrics(res['test'])}")
                return res
        where = f"epoch {state['epoch'] + 1}" + (f", batch {state['batch']}" if state["batch"] else "")
        self.rt.log(f"seed {self.seed}: resuming from {self.store.last_path} at {where}")
        return None

    def save_resume(self) -> None:
        self.store.save_resume({"model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                                "optimizer": self.opt.state_dict(), "state": self.state})

    def wrap_data_parallel(self) -> None:
        if self.ctx.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            device = self.ctx.device
            self.train_model = DDP(self.model, device_ids=[device.index] if device.type == "cuda" else None)

    def train_epoch(self, tqdm, t_start: float) -> None:
        """The remaining batches of the current epoch (all of them unless resumed mid-epoch)."""
        ctx, cfg, state, seed = self.ctx, self.cfg, self.state, self.seed
        epoch, B, n = state["epoch"], cfg["batch_size"], len(self.splits["train"])
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(seed, epoch)))
        self.train_model.train()
        inner = None
        if tqdm:
            inner = tqdm(total=self.n_batches, initial=state["batch"], desc=f"epoch {epoch + 1}/{cfg['epochs']}",
                         unit="batch", leave=False, dynamic_ncols=True)
        for b in range(state["batch"], self.n_batches):
            torch.manual_seed(mix_seed(seed, epoch, b, ctx.rank))
            idx = perm[b * B:(b + 1) * B]
            part = idx[ctx.rank::ctx.world]
            xs, ls, y = _to(self.splits["train"].batch(part), ctx.device)
            per = loss_per_sample(cfg["loss"], self.train_model(xs, ls), y)
            loss = per.sum() * (ctx.world / len(idx))
            self.check_finite(loss, epoch, b)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg["grad_clip"] > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg["grad_clip"])
            self.opt.step()
            state["loss_sum"] += float(per.detach().double().sum())
            state["loss_count"] += int(len(part))
            state["batch"] = b + 1
            if inner is not None:
                inner.update(1)
                inner.set_postfix(loss=f"{state['loss_sum'] / max(state['loss_count'], 1):.4f}")
            every = self.rt.checkpoint_every
            if every and state["batch"] % every == 0 and state["batch"] < self.n_batches:
                # the saved sums are global, so that a resume with any process count continues them
                mine = (state["loss_sum"], state["loss_count"])
                s, c = ctx.sum(mine)
                state["loss_sum"], state["loss_count"] = s, int(c)
                state["seconds"] = time.time() - t_start
                self.save_resume()
                state["loss_sum"], state["loss_count"] = mine
        if inner is not None:
            inner.close()

    def check_finite(self, loss: torch.Tensor, epoch: int, batch: int) -> None:
        """Stop the run at the first non-finite training loss (of any process): an update from it
        would turn the weights into NaN, and the run would go on reporting metrics of a dead model."""
        bad = 0.0 if bool(torch.isfinite(loss.detach())) else 1.0
        if self.ctx.enabled:
            bad = self.ctx.sum([bad])[0]
        if bad:
            raise UsageError(divergence_message(self.cfg["model"], self.model, epoch + 1, batch + 1, self.n_batches,
                                                float(loss.detach()) if not self.ctx.enabled else None))

    def end_epoch(self, t_start: float) -> Tuple[float, float, bool]:
        """Validate, keep the weights if they are the best so far, save the resume state and history.
        Returns the validation loss, the selection value and whether it improved."""
        ctx, cfg, state = self.ctx, self.cfg, self.state
        epoch = state["epoch"]
        loss_sum, loss_count = ctx.sum([state["loss_sum"], state["loss_count"]])
        vp, vy = predict_sharded(self.model, self.splits["valid"], cfg["eval_batch_size"], ctx)
        vm = _metrics(self.family, vp, vy, self.mode)
        vloss = _loss_value(cfg["loss"], vp, vy)
        row = {"epoch": epoch + 1, "train_loss": round(loss_sum / max(loss_count, 1), 6),
               "valid_loss": round(vloss, 6), **{f"valid_{k}": v for k, v in vm.items()}}
        value = {**vm, "Loss": round(vloss, 4)}[self.select]
        best = state["best"]
        # better on the selection metric, or as good with a lower validation loss (ties are
        # common for accuracy on small validation sets)
        improved = (best is None or (value < best if self.lower else value > best)
                    or (value == best and vloss < state["best_loss"]))
        state["epoch"], state["batch"], state["loss_sum"], state["loss_count"] = epoch + 1, 0, 0.0, 0
        state["seconds"] = time.time() - t_start
        row["seconds"] = round(state["seconds"], 2)
        state["history"].append(row)
        if improved:
            state["best"], state["best_epoch"], state["bad_epochs"] = value, epoch + 1, 0
            state["best_loss"] = vloss
            if ctx.is_main:
                self.store.save_best(make_checkpoint(self.model, self.splits["train"].info, cfg, self.seed,
                                                     epoch + 1, vm))
        else:
            state["bad_epochs"] += 1
            if cfg["patience"] and state["bad_epochs"] >= cfg["patience"]:
                state["stopped"] = True
        self.save_resume()
        self.store.save_history(state["history"])
        return vloss, value, improved


def train_seed(cfg: Dict[str, Any], seed: int, splits: Dict[str, MultimodalDataset], rt: Runtime, store,
               announce: bool = False, title: str = "") -> SeedRun:
    """Train ``cfg["model"]`` with ``seed`` on ``splits``, select on valid, evaluate on valid and test.

    ``cfg``: a run configuration (see :func:`.config.resolve_config`) whose ``select`` is set.
    ``store``: a :class:`.stores.SeedFolder` or :class:`.stores.InMemoryStore`. ``title``: of the
    learning curve.
    """
    run = _SeedTraining(cfg, seed, splits, rt, store)
    if announce:
        rt.log(run.describe_model())
    finished = run.resume() if rt.resume else None
    if finished is not None:
        return SeedRun(run.model, run.state["history"], finished)
    run.wrap_data_parallel()

    state, E, select = run.state, cfg["epochs"], cfg["select"]
    tqdm = require_module("tqdm", "progress bars").tqdm if rt.progress else None
    bar = tqdm(total=E, initial=state["epoch"], desc=f"seed {seed}", unit="epoch", dynamic_ncols=True) if tqdm else None
    t_start = time.time() - state["seconds"]
    while state["epoch"] < E and not state["stopped"]:
        run.train_epoch(tqdm, t_start)
        vloss, value, improved = run.end_epoch(t_start)
        row = state["history"][-1]
        if bar is not None:
            bar.update(1)
            bar.set_postfix(valid=f"{select} {value:.4f}", best=f"{state['best']:.4f}")
        elif not rt.quiet:
            rt.log(f"epoch {row['epoch']:3d}/{E}  train_loss {row['train_loss']:.4f}  valid_loss {vloss:.4f}  "
                   f"valid {select} {value:.4f}{'  *' if improved else ''}")
        if state["stopped"]:
            rt.log(f"seed {seed}: no improvement for {cfg['patience']} epochs, stopping")
    if bar is not None:
        bar.close()

    rt.ctx.barrier()
    result = None
    if rt.ctx.is_main:
        result = _final_evaluation(cfg, seed, splits, rt, store, run.model, state, title)
        run.save_resume()
    rt.ctx.barrier()
    return SeedRun(run.model, state["history"], result)


def _metrics(family: str, preds, labels, mode: str) -> Dict[str, float]:
    try:
        return metrics_mod.compute_metrics(family, preds, labels, mode=mode)
    except ValueError as e:  # the mmsa mode is undefined on some label sets (e.g. every label 0)
        raise UsageError(f"--metrics {mode}: {e}") from None


def _final_evaluation(cfg, seed, splits, rt: Runtime, store, model, state, title: str) -> Dict[str, Any]:
    """The selected weights on valid and test, in one process, exactly as ``evaluate`` does it."""
    device, select = rt.ctx.device, cfg["select"]
    family = splits["train"].info.metrics
    ck = store.load_best()
    model.load_state_dict(ck["model"])
    bs = cfg["eval_batch_size"]
    mode = cfg.get("metrics", "default")
    vm = _metrics(family, *predict(model, splits["valid"], bs, device), mode)
    tm = _metrics(family, *predict(model, splits["test"], bs, device), mode)
    ck["valid_metrics"], ck["test_metrics"] = vm, tm
    result = {
        "seed": seed,
        "best_epoch": state["best_epoch"],
        "epochs_run": state["epoch"],
        "select": select,
        "valid": vm,
        "test": tm,
        "train_seconds": round(state["seconds"], 2),
        "model": ck["model_config"],
        "parameters": parameter_count(model),
        "checkpoint": store.checkpoint_name,
    }
    coupling = learned_coupling(model)
    if coupling is not None:
        result["coupling_weights"] = coupling  # per layer, the learned W of the selected weights
    store.save_result(result, ck)
    try:
        store.plot(state["history"], select, state["best_epoch"], title or f"{cfg['model']} on {cfg['dataset']}, "
                   f"seed {seed}")
    except Exception as e:  # a plotting problem must not lose a finished run
        rt.log(f"warning: could not draw the learning curve: {e}", always=True)
    state["finished"] = True
    if len(cfg["seeds"]) > 1:
        rt.log(f"seed {seed}: best epoch {state['best_epoch']} (valid {select} {state['best']:.4f}); "
               f"test {format_metrics(tm)}", always=True)
    return result
