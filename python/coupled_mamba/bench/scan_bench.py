"""Benchmark of the fused coupled selective scan against the PyTorch reference, and of its
uncoupled case against mambapy's parallel scan (bench/mambapy_scan.py) when mambapy is importable.

Prints a table and writes JSON. Every figure of one run is measured in that run: times of the
fused op and of the reference, their ratio, and the "exp floor" (torch.exp over as many
cache-resident floats as the scan has cells, with the same threads). Peak memory is the growth
of the process's peak resident set (ru_maxrss) while running one forward (+ backward) in a
fresh worker process, so allocations inside the C++ library count too.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

from ..ops.inputs import make_inputs as _make_inputs

SIZES = {
    "paper": dict(Bt=32, M=3, D=256, N=64, L=50),
    "long": dict(Bt=2, M=3, D=256, N=16, L=4096),
}
QUICK_SIZES = {
    "paper-quick": dict(Bt=4, M=3, D=64, N=16, L=50),
    "long-quick": dict(Bt=1, M=3, D=32, N=16, L=512),
}


def make_inputs(Bt, M, D, N, L, dtype=torch.float32, requires_grad=False, seed=0):
    """The op's inputs with D, z and delta_bias, without an initial state (as in a model)."""
    return _make_inputs(Bt, M, D, N, L, dtype=dtype, initial_state=False, requires_grad=requires_grad, seed=seed)


def scan_fn(impl: str):
    if impl == "fused":
        from coupled_mamba import coupled_selective_scan as fn
    else:
        from coupled_mamba.ops import coupled_selective_scan_ref as fn
    return fn


def run_once(fn, x, mode: str, coupling="mean"):
    out = fn(**x, delta_softplus=True, coupling=coupling)
    if mode == "fwd+bwd":
        out.backward(torch.ones_like(out))
        for v in x.values():
            v.grad = None
    return out


def timeit(fn, repeats: int, min_time: float = 0.0) -> float:
    """Median of `repeats` timings after one warm-up call (at least min_time seconds in all)."""
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - start < min_time and len(times) < 100):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def exp_floor(cells: int, repeats: int) -> float:
    """Seconds torch.exp takes for `cells` exponentials of float32 data that stays in cache."""
    block = 1 << 16  # 256 KiB: L2-resident
    src = torch.rand(block) * -4.0
    dst = torch.empty_like(src)
    reps = max(1, cells // block)

    def run():
        for _ in range(reps):
            torch.exp(src, out=dst)

    return timeit(run, repeats) * cells / (reps * block)


def worker(args) -> None:
    """Runs in a fresh process: times one (impl, mode, size) and reports its peak memory growth."""
    size = json.loads(args.worker_size)
    fn = scan_fn(args.worker_impl)
    grad = args.worker_mode == "fwd+bwd"
    # Warm up on a tiny problem so one-time costs (library load, op registration) stay out of the peak.
    run_once(fn, make_inputs(1, size["M"], 2, 2, 3, requires_grad=grad), args.worker_mode)
    x = make_inputs(**size, requires_grad=grad)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.set_grad_enabled(args.worker_mode == "fwd+bwd"):
        run_once(fn, x, args.worker_mode)
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        seconds = timeit(lambda: run_once(fn, x, args.worker_mode), args.repeats, args.min_time)
    print(json.dumps({"seconds": seconds, "peak_mb": peak_kb / 1024.0}))


def measure(impl: str, mode: str, size: dict, repeats: int, min_time: float) -> dict:
    cmd = [sys.executable, "-m", "coupled_mamba.bench.scan_bench", "--worker-impl", impl, "--worker-mode", mode,
           "--worker-size", json.dumps(size), "--repeats", str(repeats), "--min-time", str(min_time)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"benchmark worker failed ({impl}, {mode}, {size}):\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def machine() -> dict:
    import coupled_mamba

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "kernels": coupled_mamba.cpu_isa(), "python": platform.python_version()}


def padded_case(size: dict, repeats: int, min_time: float) -> list:
    """A padded batch: half the samples (at least one) valid for L/4 steps, the rest for L. Times
    the op given those lengths against the op without them (every step scanned), same inputs."""
    from coupled_mamba import coupled_selective_scan as fn

    Bt, L = size["Bt"], size["L"]
    lengths = torch.full((Bt,), L, dtype=torch.int64)
    lengths[: max(1, Bt // 2)] = max(1, L // 4)
    x = make_inputs(**size, requires_grad=True)
    rows = []
    for mode in ("fwd", "fwd+bwd"):
        with torch.set_grad_enabled(mode == "fwd+bwd"):
            full = timeit(lambda: run_once(fn, x, mode), repeats, min_time)
            short = timeit(lambda: run_once(fn, dict(x, lengths=lengths), mode), repeats, min_time)
        valid = float(lengths.sum()) / (Bt * L)
        rows.append(dict(mode=mode, no_lengths_ms=full * 1e3, lengths_ms=short * 1e3, ratio=short / full,
                         valid_fraction=valid))
    return rows


def mambapy_section(table: dict, args) -> dict:
    """The op with coupling "none" against mambapy's parallel scan (bench/mambapy_scan.py)."""
    from . import mambapy_scan

    print('\n# coupling "none" (M independent Mamba scans) vs mambapy\'s parallel scan (pure PyTorch), same inputs')
    if args.no_mambapy or args.padded_only:
        reason = "skipped (--no-mambapy or --padded-only)"
    else:
        reason = mambapy_scan.unavailable_reason()
    if reason:
        print(f"skipped: {reason}")
        return {"status": reason, "rows": []}
    print(f"{'size':<12} {'mode':<8} {'fused ms':>10} {'mambapy ms':>11} {'speed-up':>9} {'rel diff':>9}")
    rows = mambapy_scan.compare(table, make_inputs, timeit, args.repeats, args.min_time, args.mambapy_repeats)
    for r in rows:
        print(f"{r['size']:<12} {r['mode']:<8} {r['fused_ms']:>10.2f} {r['mambapy_ms']:>11.1f} {r['speedup']:>8.1f}x "
              f"{r['rel_diff']:>9.1e}", flush=True)
    return {"status": "ok", "rows": rows}


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--device" in argv and argv[argv.index("--device") + 1 :][:1] == ["cuda"]:
        from .scan_cuda_bench import main as cuda_main  # the GPU benchmark has its own table

        return cuda_main(argv)
    p = argparse.ArgumentParser(prog="python -m coupled_mamba.bench scan", description=__doc__.split("\n")[0])
    p.add_argument("--sizes", nargs="*", default=None, help=f"names among {list(SIZES) + list(QUICK_SIZES)}")
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--min-time", type=float, default=1.0, help="time each variant at least this long (s)")
    p.add_argument("--ref-repeats", type=int, default=2, help="repeats for the (slow) reference")
    p.add_argument("--out", default="bench_scan.json")
    p.add_argument("--padded-only", action="store_true", help="only the padded-batch case (lengths vs none)")
    p.add_argument("--mambapy-repeats", type=int, default=3, help="repeats for mambapy's parallel scan")
    p.add_argument("--no-mambapy", action="store_true", help="skip the comparison with mambapy's parallel scan")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cuda: the GPU benchmark (scan_cuda_bench)")
    p.add_argument("--worker-impl", help=argparse.SUPPRESS)
    p.add_argument("--worker-mode", help=argparse.SUPPRESS)
    p.add_argument("--worker-size", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker_impl:
        return worker(args)

    table = dict(QUICK_SIZES if args.quick else SIZES)
    if args.sizes:
        table = {k: {**SIZES, **QUICK_SIZES}[k] for k in args.sizes}
    info = machine()
    print(f"# coupled selective scan, CPU: {info['cpu']}, {info['threads']} threads, kernels {info['kernels']}, "
          f"torch {info['torch']}; coupling mean, float32, D, z, delta_bias, softplus")
    header = (f"{'size':<12} {'mode':<8} {'fused ms':>10} {'ref ms':>10} {'speed-up':>9} {'fused MB':>9} "
              f"{'ref MB':>9} {'floor ms':>9} {'x floor':>8}")
    print(header)
    rows = []
    for name, size in ({} if args.padded_only else table).items():
        cells = size["Bt"] * size["M"] * size["D"] * size["L"] * size["N"]
        floor = exp_floor(cells, args.repeats)
        for mode in ("fwd", "fwd+bwd"):
            fused = measure("fused", mode, size, args.repeats, args.min_time)
            ref = measure("reference", mode, size, args.ref_repeats, 0.0)
            row = dict(size=name, **size, cells=cells, mode=mode, fused_ms=fused["seconds"] * 1e3,
                       ref_ms=ref["seconds"] * 1e3, speedup=ref["seconds"] / fused["seconds"],
                       fused_peak_mb=fused["peak_mb"], ref_peak_mb=ref["peak_mb"], exp_floor_ms=floor * 1e3,
                       fused_over_floor=fused["seconds"] / floor)
            rows.append(row)
            print(f"{name:<12} {mode:<8} {row['fused_ms']:>10.2f} {row['ref_ms']:>10.1f} {row['speedup']:>8.1f}x "
                  f"{row['fused_peak_mb']:>9.1f} {row['ref_peak_mb']:>9.1f} {row['exp_floor_ms']:>9.2f} "
                  f"{row['fused_over_floor']:>8.2f}", flush=True)
    print(f"\n# padded batch: half the samples valid for L/4 steps; the op with lengths vs without (every step)")
    print(f"{'size':<12} {'mode':<8} {'no lengths ms':>14} {'lengths ms':>11} {'ratio':>6} {'valid steps':>12}")
    padded = []
    for name, size in table.items():
        for row in padded_case(size, args.repeats, args.min_time):
            padded.append(dict(size=name, **size, **row))
            print(f"{name:<12} {row['mode']:<8} {row['no_lengths_ms']:>14.2f} {row['lengths_ms']:>11.2f} "
                  f"{row['ratio']:>6.2f} {row['valid_fraction']:>12.3f}", flush=True)
    mambapy = mambapy_section(table, args)
    with open(args.out, "w") as f:
        json.dump({"machine": info, "command": "python -m coupled_mamba.bench scan " + " ".join(argv or sys.argv[1:]),
                   "rows": rows, "padded": padded, "mambapy": mambapy}, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
