"""Training-step and inference time of every model kind at CMU-MOSEI's sizes, and the scan's share
of each coupled model's step.

    python -m coupled_mamba.bench train [--quick] [--models ...] [--repeats 5] [--out bench_train.json]

Every model: d_model 128, 3 layers, d_state 64 (Mamba kinds), 4 heads (attention kinds), three
modalities of CMU-MOSEI's widths (768, 74, 35), dropout 0.1 in training. Two cases:
- aligned: batch 32, L = 50, ``align="resample"`` on inputs already of length 50 (no mask);
- unaligned: batch 8, L = 500, ``align="pad"``; every sample's length of every modality is drawn
  uniformly from [L/2, L] (seed 0), so the models take their masked paths.

A training step is ``zero_grad``, forward, L1 loss, backward, Adam step (lr 1e-3, fused as in
training); inference is one forward in eval mode under torch.inference_mode. Times are medians over ``--repeats`` runs
after ``--warmup`` runs; the models of a case take turns (one step of each, then the next round), so
that a slow spell of a shared machine weighs on all of them and their ratios stay comparable. The scan's share of a coupled model's step is the self time of everything inside
the scan's ops (``coupled_mamba::scan_fwd`` / ``scan_bwd``) in torch.profiler over one step (the kernels and
the Python inside the ops, without the aten:: copies they make), divided by that step's wall time; the
fused conv (``coupled_mamba::causal_conv_silu_*``) is not part of it. The conv's own share is reported
next to it.

The process keeps the memory a step frees, as ``coupled-mamba train`` does (``--malloc retain``,
:mod:`coupled_mamba.train.memory`); ``--malloc glibc`` keeps glibc's defaults. "faults/step" is
the mean number of minor page faults per timed training step.

When the pure-PyTorch Mamba of the ``mambapy`` package is importable (it is never a dependency),
the same run also times it as an uncoupled fusion model: one mambapy Mamba stack (parallel scan)
per modality, with the same front end and head as the other models; mambapy has no masks, so it
runs over the padded steps too.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Dict, List, Optional

import torch

from ..train.memory import retain_freed_memory
from ..train.optim import adam
from .model_bench import INPUT_DIMS, cpu_model_name

MODEL_ARGS = dict(d_model=128, n_layers=3, d_state=64, d_conv=4, expand=2, n_heads=4, dropout=0.1)
# coupled-sum is left out by default: its state grows like 3^L and overflows at L = 500.
DEFAULT_MODELS = ["coupled-mean", "coupled-none", "coupled-learned", "concat", "average", "transformer",
                  "cross-attention"]
MAMBAPY = "mambapy"
# (name, batch, L, align, padded)
CASES = [("aligned", 32, 50, "resample", False), ("unaligned", 8, 500, "pad", True)]
QUICK_CASES = [("aligned", 4, 12, "resample", False), ("unaligned", 2, 24, "pad", True)]


def make_inputs(batch: int, L: int, padded: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(batch, L, d, generator=g) for d in INPUT_DIMS]
    lengths = None
    if padded:
        lengths = [torch.randint(L // 2, L + 1, (batch,), generator=g) for _ in INPUT_DIMS]
    y = torch.randn(batch, generator=g)
    return xs, lengths, y


def mambapy_model(L: int, align: str):
    """An uncoupled fusion model on mambapy's Mamba (one stack per modality), or None if mambapy is
    not importable."""
    try:
        from mambapy.mamba import Mamba, MambaConfig
    except ImportError:
        return None
    import torch.nn as nn

    from coupled_mamba.modules.multimodal import MultimodalModel

    a = MODEL_ARGS

    class MambapyFusion(MultimodalModel):
        kind = MAMBAPY

        def __init__(self):
            super().__init__(INPUT_DIMS, a["d_model"], len(INPUT_DIMS), "concat", L, align, a["dropout"])
            cfg = MambaConfig(d_model=a["d_model"], n_layers=a["n_layers"], d_state=a["d_state"],
                              expand_factor=a["expand"], d_conv=a["d_conv"], pscan=True)
            self.stacks = nn.ModuleList(Mamba(cfg) for _ in INPUT_DIMS)

        def fuse(self, x, mask):
            return torch.stack([s(x[:, m]) for m, s in enumerate(self.stacks)], dim=1), mask

    return MambapyFusion()


def build(kind: str, L: int, align: str):
    if kind == MAMBAPY:
        return mambapy_model(L, align)
    from coupled_mamba.modules import build_model

    return build_model(kind, INPUT_DIMS, seq_len=L, align=align, **MODEL_ARGS)


def minor_faults() -> int:
    """Page faults the kernel served without I/O so far in this process (0 where unknown)."""
    try:
        import resource
    except ImportError:  # not Unix
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def interleaved_medians(fns: Dict[str, callable], warmup: int, repeats: int):
    """Median ms of each fn, timed in turns (a, b, c, a, b, c, ...) so that a slow spell of a shared
    machine falls on every model alike rather than on whichever was being timed then; and each fn's
    mean minor page faults per call."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: Dict[str, List[float]] = {k: [] for k in fns}
    faults = {k: 0 for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            f0, t0 = minor_faults(), time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
            faults[k] += minor_faults() - f0
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}, {k: v / repeats for k, v in faults.items()}


SCAN_OPS = "coupled_mamba::scan_"
CONV_OPS = "coupled_mamba::causal_conv_silu_"
# The dense projections: bound by their arithmetic, so the part of a step that is neither scan nor
# matmul is what overhead there is left to remove.
# The in-place forms (addmm_, baddbmm_) are the ones the layer's projections accumulate with.
MATMUL_OPS = ("aten::bmm", "aten::mm", "aten::addmm", "aten::addmm_", "aten::baddbmm", "aten::baddbmm_",
              "aten::addbmm")


def _inside_op(e, prefix: str = SCAN_OPS) -> bool:
    while e is not None:
        if e.name.startswith(prefix):
            return True
        e = e.cpu_parent
    return False


def _inside_scan_op(e) -> bool:
    return _inside_op(e, SCAN_OPS)


def scan_share(step) -> Dict:
    """The scan ops' time over one step (and the fused conv's), against the step's wall time.

    With autograd on, the forward kernel's time shows up as the self time of the autograd Function
    that torch.library wraps around the op (``GeneratedBackwardFor_coupled_mamba_scan_fwd_...``,
    a child of ``coupled_mamba::scan_fwd``), not as the op's own self time; so the share counts the
    self time of everything inside a coupled_mamba:: op except the aten:: ops it calls (input
    conversions, gradient copies), which ``scan_op_share`` adds back.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        step()
        wall_us = 1e6 * (time.perf_counter() - t0)
    events = [e for e in prof.events() if _inside_scan_op(e)]
    kernel_us = sum(e.self_cpu_time_total for e in events if not e.name.startswith("aten::"))
    op_us = sum(e.self_cpu_time_total for e in events)
    ops: Dict[str, float] = {}
    for e in prof.events():
        if e.name.startswith("coupled_mamba::") and not _inside_op(e.cpu_parent, "coupled_mamba::"):
            ops[e.name] = ops.get(e.name, 0.0) + e.cpu_time_total / 1e3
    conv_us = sum(e.self_cpu_time_total for e in prof.events() if _inside_op(e, CONV_OPS))
    matmul_us = sum(e.self_cpu_time_total for e in prof.events()
                    if e.name in MATMUL_OPS and not _inside_op(e, "coupled_mamba::"))
    return {"scan_share": kernel_us / wall_us, "scan_op_share": op_us / wall_us, "scan_ops_ms": ops,
            "conv_share": conv_us / wall_us, "matmul_share": matmul_us / wall_us,
            "profiled_step_ms": wall_us / 1e3, "profile": prof}


class Runner:
    """One model of one case with its inputs and optimiser: a training step and an inference."""

    def __init__(self, kind: str, case):
        name, batch, L, align, padded = case
        self.kind, self.case = kind, case
        self.row = {"case": name, "batch": batch, "length": L, "model": kind}
        torch.manual_seed(0)
        self.model = build(kind, L, align)
        if self.model is None:
            self.row["status"] = "skipped (mambapy is not importable: pip install mambapy to time it)"
            return
        self.xs, self.lengths, self.y = make_inputs(batch, L, padded)
        self.opt = adam(self.model.parameters(), lr=1e-3)  # the training loop's (fused where it can be)

    def train_step(self):
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        loss = (self.model(self.xs, self.lengths) - self.y).abs().mean()
        loss.backward()
        self.opt.step()

    def infer(self):
        self.model.eval()
        with torch.inference_mode():
            self.model(self.xs, self.lengths)


def measure_case(case, kinds: List[str], args) -> List[Dict]:
    """Every model of one case: training steps timed in turns, then inferences timed in turns,
    then one profiled step of each coupled model."""
    runners = [Runner(kind, case) for kind in kinds]
    ready = [r for r in runners if r.model is not None]
    train, train_faults = interleaved_medians({r.kind: r.train_step for r in ready}, args.warmup, args.repeats)
    infer, _ = interleaved_medians({r.kind: r.infer for r in ready}, args.warmup, args.repeats)
    for r in ready:
        r.row["train_ms"], r.row["infer_ms"] = train[r.kind], infer[r.kind]
        r.row["train_page_faults"] = train_faults[r.kind]
        if r.kind.startswith("coupled-"):
            share = scan_share(r.train_step)
            prof = share.pop("profile")
            r.row.update(share)
            if args.profile:
                name, batch, L = case[:3]
                print(f"\n--- {r.kind}, {name} (batch {batch}, L {L}): training step, top ops by self time ---")
                print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile))
        r.row["status"] = "ok"
    return [r.row for r in runners]


def machine() -> Dict:
    return {
        "cpu": cpu_model_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def format_table(rows: List[Dict]) -> str:
    lines = [f"{'case':<10} {'batch':>5} {'L':>5} {'model':<16} {'train ms':>9} {'x Transf.':>9} "
             f"{'infer ms':>9} {'x Transf.':>9} {'scan share':>10} {'matmul share':>12} {'faults/step':>11}"]
    ref = {r["case"]: r for r in rows if r["model"] == "transformer" and r.get("status") == "ok"}
    for r in rows:
        head = f"{r['case']:<10} {r['batch']:>5} {r['length']:>5} {r['model']:<16}"
        if r.get("status") != "ok":
            lines.append(f"{head} {r.get('status')}")
            continue
        t = ref.get(r["case"])
        tr = f"{r['train_ms'] / t['train_ms']:.2f}x" if t else "-"
        ir = f"{r['infer_ms'] / t['infer_ms']:.2f}x" if t else "-"
        share = f"{100 * r['scan_share']:.0f}%" if "scan_share" in r else "-"
        mm = f"{100 * r['matmul_share']:.0f}%" if "matmul_share" in r else "-"
        lines.append(f"{head} {r['train_ms']:>9.1f} {tr:>9} {r['infer_ms']:>9.1f} {ir:>9} {share:>10} {mm:>12} "
                     f"{r.get('train_page_faults', 0):>11.0f}")
    return "\n".join(lines)


def parse_args(argv: Optional[List[str]]):
    p = argparse.ArgumentParser(prog="python -m coupled_mamba.bench train", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run): " + str(QUICK_CASES))
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS + [MAMBAPY],
                   help=f"model kinds (default {DEFAULT_MODELS} and {MAMBAPY!r} when importable)")
    p.add_argument("--cases", nargs="+", choices=[c[0] for c in CASES], default=[c[0] for c in CASES])
    p.add_argument("--repeats", type=int, default=5, help="timed runs per point (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs before them")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--profile", type=int, default=0, metavar="ROWS",
                   help="print the top ROWS ops of each coupled model's profiled step")
    p.add_argument("--malloc", choices=["retain", "glibc"], default="retain",
                   help="retain: glibc keeps freed memory, as in coupled-mamba train (coupled_mamba/train/memory.py); "
                        "glibc: its default thresholds")
    p.add_argument("--out", default="bench_train.json", help="JSON output path")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    retained = retain_freed_memory() if args.malloc == "retain" else False
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = [c for c in (QUICK_CASES if args.quick else CASES) if c[0] in args.cases]
    load_before = machine()["load_average"]
    rows = []
    for case in cases:
        case_rows = measure_case(case, args.models, args)
        rows += case_rows
        print(format_table(case_rows), flush=True)
    print("\n" + format_table(rows))
    report = {
        "benchmark": "training step (forward + L1 loss + backward + Adam) and inference forward per model kind",
        "command": " ".join(["python -m coupled_mamba.bench train", *argv]),
        "machine": {**machine(), "load_average_before": load_before},
        "setup": {"input_dims": INPUT_DIMS, "cases": [dict(zip(("case", "batch", "length", "align", "padded"), c))
                                                       for c in cases], **MODEL_ARGS,
                  "optimizer": "Adam(lr=1e-3, fused=True)",
                  "malloc": "freed memory retained (mallopt)" if retained else "glibc's defaults", "loss": "L1", "repeats": args.repeats, "warmup": args.warmup},
        "scan_share_method": "self time of everything inside the coupled_mamba::scan_* ops in torch.profiler over one "
                             "training step except aten:: ops (scan_op_share: including them) / that step's "
                             "wall time",
        "matmul_share_method": "self time of the aten matmul ops " + ", ".join(MATMUL_OPS) + " outside the "
                               "coupled_mamba:: ops over the same profiled step / its wall time",
        "rows": rows,
    }
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
