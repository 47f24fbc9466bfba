"""Inference time and peak memory of Coupled Mamba against attention fusion, over sequence length
(the paper's Figures 3 and 4).

    python -m coupled_mamba.bench model [--lengths 100 200 ...] [--device cpu cuda] [--batch 1]
                                        [--out bench_model.json] [--plot docs/bench_model.png]

Every model gets the same input projections, head, width (d_model 128) and depth (3 layers);
three modalities with CMU-MOSEI's feature widths (768, 74, 35), all of length L (no padding, no
resampling: seq_len = L), batch ``--batch``, eval mode under torch.inference_mode. The
Transformer attends over all 3 L tokens, the cross-attention model lets each modality's L
tokens attend to the other 2 L.

Time: median wall time of full forwards after one warm-up run (CUDA: synchronised).
Memory, which is not the same quantity on both devices, so the output names it:
- CUDA: torch.cuda.max_memory_allocated() during the forward minus the memory allocated before
  it (weights and inputs excluded): the peak of activations and workspaces.
- CPU: the same quantity, from the allocation records of torch.profiler (profile_memory=True):
  the highest running total of bytes allocated minus bytes freed through PyTorch's CPU
  allocator during the forward. Scratch that the C++ scan kernels allocate themselves (one
  small per-thread buffer) is not in it. The JSON also holds the process's peak-RSS increase
  (Linux VmHWM after resetting it), which counts everything but also allocator caching.
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

DEFAULT_LENGTHS = [100, 200, 500, 1000, 2000, 4000, 8000]
QUICK_LENGTHS = [16, 32, 64]
DEFAULT_MODELS = ["coupled-mean", "cross-attention", "transformer"]
INPUT_DIMS = [768, 74, 35]  # CMU-MOSEI: text, audio, vision
MODEL_ARGS = dict(d_model=128, n_layers=3, d_state=64, d_conv=4, expand=2, n_heads=4, dropout=0.0, align="pad")
LABELS = {"coupled-mean": "Coupled Mamba", "cross-attention": "Cross-attention fusion", "transformer": "Transformer"}


def cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _proc_status_kb(key: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def cpu_peak_tensor_bytes(fn) -> int:
    """Highest running total of bytes allocated minus freed through PyTorch's CPU allocator while
    fn() runs, from torch.profiler's memory records."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    records = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    records.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for e in records:
        live += e.nbytes()
        peak = max(peak, live)
    return peak


def measure(model, xs, device: str, repeats: int, slow_s: float) -> Dict:
    """Time and peak memory of model(xs) on one device."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def run():
        with torch.inference_mode():
            model(xs)

    t0 = time.perf_counter()
    run()  # warm-up (lazy initialisation, kernel selection)
    sync()
    warm_s = time.perf_counter() - t0
    times = []
    for _ in range(1 if warm_s > slow_s else repeats):
        sync()
        t0 = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - t0)
    result = {"ms": 1e3 * statistics.median(times), "runs": len(times)}

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        run()
        torch.cuda.synchronize()
        result["peak_mb"] = (torch.cuda.max_memory_allocated() - before) / 2**20
    else:
        result["peak_mb"] = cpu_peak_tensor_bytes(run) / 2**20
        rss_before = _proc_status_kb("VmRSS")
        if _reset_peak_rss() and rss_before is not None:
            run()
            hwm = _proc_status_kb("VmHWM")
            result["peak_rss_increase_mb"] = max(0, hwm - rss_before) / 1024 if hwm is not None else None
    return result


def attention_matrix_bytes(kind: str, L: int, batch: int) -> int:
    """Bytes of the attention scores one layer materialises with the math backend (scores and
    their softmax, float32), to skip points that would not fit in host memory."""
    M, heads = len(INPUT_DIMS), MODEL_ARGS["n_heads"]
    if kind == "transformer":
        return 2 * 4 * batch * heads * (M * L) ** 2
    if kind == "cross-attention":
        return 2 * 4 * batch * heads * L * (M - 1) * L
    return 0


def available_host_bytes() -> Optional[int]:
    kb = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    kb = int(line.split()[1])
    except OSError:
        pass
    return None if kb is None else kb * 1024


def sdpa_context(backend: str):
    if backend == "default":
        import contextlib

        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


def run_benchmark(args, argv: List[str]) -> Dict:
    from coupled_mamba.modules import build_model

    results: List[Dict] = []
    # Other processes on the machine distort CPU timings; the report keeps the load it ran under.
    load_before = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    for device in args.device:
        skip = set()  # models that already took longer than --time-limit at a shorter length
        for L in args.lengths:
            for kind in args.models:
                row = {"device": device, "model": kind, "length": L, "batch": args.batch}
                if kind in skip:
                    row["status"] = f"skipped (a shorter length took over {args.time_limit:g} s)"
                    results.append(row)
                    print(format_row(row), flush=True)
                    continue
                need, have = attention_matrix_bytes(kind, L, args.batch), available_host_bytes()
                if args.sdpa_backend == "math" and device == "cpu" and have and need > have / 2:
                    row["status"] = f"skipped (attention scores need {need / 2**30:.1f} GiB)"
                    results.append(row)
                    print(format_row(row), flush=True)
                    continue
                torch.manual_seed(0)
                model = build_model(kind, INPUT_DIMS, seq_len=L, **MODEL_ARGS).to(device).eval()
                xs = [torch.randn(args.batch, L, d, device=device) for d in INPUT_DIMS]
                try:
                    with sdpa_context(args.sdpa_backend):
                        row.update(measure(model, xs, device, args.repeats, args.time_limit / 2))
                    row["status"] = "ok"
                    if row["ms"] / 1e3 > args.time_limit:
                        skip.add(kind)
                except torch.OutOfMemoryError:
                    row["status"] = "out of memory"
                    skip.add(kind)
                finally:
                    del model, xs
                    if device.startswith("cuda"):
                        torch.cuda.empty_cache()
                results.append(row)
                print(format_row(row), flush=True)
    return {
        "benchmark": "model inference: time and peak memory against sequence length",
        "command": " ".join(["python -m coupled_mamba.bench model", *argv]),
        "machine": {
            "cpu": cpu_model_name(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average_before": load_before,
            "load_average_after": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "setup": {"input_dims": INPUT_DIMS, "batch": args.batch, "sdpa_backend": args.sdpa_backend, **MODEL_ARGS},
        "memory_method": {
            "cuda": "torch.cuda.max_memory_allocated() during the forward minus memory_allocated() before it",
            "cpu": "peak running total of PyTorch CPU allocations minus frees during the forward "
                   "(torch.profiler profile_memory records); peak_rss_increase_mb: VmHWM after reset minus VmRSS before",
        },
        "results": results,
    }


def format_row(row: Dict) -> str:
    if row.get("status") != "ok":
        return f"{row['length']:>7} {row['device']:>6} {row['model']:<16} {row.get('status')}"
    return f"{row['length']:>7} {row['device']:>6} {row['model']:<16} {row['ms']:>12.2f} {row['peak_mb']:>12.1f}"


def print_table(report: Dict) -> None:
    print(f"\n{'length':>7} {'device':>6} {'model':<16} {'ms/forward':>12} {'peak MB':>12}")
    for row in report["results"]:
        print(format_row(row))
    print("peak MB: " + "; ".join(f"{k}: {v}" for k, v in report["memory_method"].items()))
    # The paper's two numbers: speed-up and memory saving of Coupled Mamba against the Transformer.
    ok = {(r["device"], r["model"], r["length"]): r for r in report["results"] if r.get("status") == "ok"}
    for (device, kind, L), r in sorted(ok.items()):
        t = ok.get((device, "transformer", L))
        if kind == "coupled-mean" and t:
            saving = 100 * (1 - r["peak_mb"] / t["peak_mb"]) if t["peak_mb"] > 0 else float("nan")
            print(f"{device} L={L}: Coupled Mamba takes {r['ms'] / t['ms']:.2f}x the Transformer's time "
                  f"({t['ms'] / r['ms']:.2f}x as fast) and " + (f"{saving:.1f}% less" if saving >= 0 else
                  f"{-saving:.1f}% more") + " peak memory")


def _require_matplotlib() -> None:
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise SystemExit('the plot (--plot) needs matplotlib: pip install "coupled-mamba[train]", '
                         "or pass --plot '' for none")


def plot(report: Dict, path: str) -> None:
    _require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"cpu": "-", "cuda": "--"}
    rows = [r for r in report["results"] if r.get("status") == "ok"]
    for device in sorted({r["device"] for r in rows}):
        for kind in dict.fromkeys(r["model"] for r in rows):
            pts = sorted((r["length"], r["ms"], r["peak_mb"]) for r in rows if r["device"] == device and r["model"] == kind)
            if not pts:
                continue
            Ls, ms, mb = zip(*pts)
            label = f"{LABELS.get(kind, kind)} ({device})"
            ls = styles.get(device.split(":")[0], ":")
            ax_t.plot(Ls, ms, ls, marker="o", label=label)
            ax_m.plot(Ls, mb, ls, marker="o", label=label)
    lengths = sorted({r["length"] for r in rows})
    for ax, title, unit in ((ax_t, "Inference time", "ms per forward"), (ax_m, "Peak memory", "MB (activations)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(lengths, [str(L) for L in lengths], minor=False)
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xlabel("sequence length L (3 modalities)")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    ax_t.legend(fontsize=8)
    m = report["machine"]
    backend = report["setup"].get("sdpa_backend", "default")
    attention = "attention: SDPA's default kernels" if backend == "default" else "attention: SDPA math (scores materialised)"
    fig.suptitle(f"batch {report['setup']['batch']}, d_model 128, 3 layers, {attention}; CPU: {m['cpu']}"
                 f", {m['torch_threads']} thread(s)"
                 + (f"; GPU: {m['gpu']}" if m["gpu"] else ""), fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: Optional[List[str]]):
    p = argparse.ArgumentParser(prog="python -m coupled_mamba.bench model", description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", type=int, nargs="+", default=None, help=f"default {DEFAULT_LENGTHS}")
    p.add_argument("--quick", action="store_true", help=f"short lengths {QUICK_LENGTHS} (a smoke run)")
    p.add_argument("--device", nargs="+", default=None, help="default: cpu, and cuda when one is present")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help=f"model kinds, default {DEFAULT_MODELS}")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per point (median reported)")
    p.add_argument("--time-limit", type=float, default=60.0,
                   help="once one forward of a model takes longer than this (s), skip its longer lengths")
    p.add_argument("--sdpa-backend", choices=["default", "math"], default="default",
                   help="'math' forces the attention matrix to be materialised (no flash / memory-efficient kernels)")
    p.add_argument("--out", default="bench_model.json", help="JSON output path")
    p.add_argument("--plot", default="docs/bench_model.png", help="PNG output path ('' for none)")
    args = p.parse_args(argv)
    if args.lengths is None:
        args.lengths = QUICK_LENGTHS if args.quick else DEFAULT_LENGTHS
    if args.device is None:
        args.device = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return args


def main(argv: Optional[List[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.plot:
        _require_matplotlib()  # before the benchmark, not after minutes of it
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{'length':>7} {'device':>6} {'model':<16} {'ms/forward':>12} {'peak MB':>12}", flush=True)
    report = run_benchmark(args, argv)
    print_table(report)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {args.out}")
    if args.plot:
        plot(report, args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
