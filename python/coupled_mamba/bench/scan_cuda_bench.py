"""GPU benchmark of the fused coupled selective scan (``python -m coupled_mamba.bench scan --device cuda``).

For float32 and bfloat16 at the paper's size and at L = 512 ... 16384 it times, in one run on one
GPU: the fused op with coupling "mean" (rank one; with the library's automatic choice of time
segments, and forced to one segment: the two layouts of docs/cuda.md), the same kernels with
coupling "none" (the price of coupling), and the PyTorch reference (up to --ref-max-len). Each time is set against
the larger of two floors measured in the same run: the exp floor (the kernels' exp over every
cell, timed by the library's register-only probe: one exp per cell forward, three for forward +
backward: forward, recomputation, reverse step) and the memory floor (bytes that must move, at
the device-to-device copy bandwidth torch reaches). Prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

from ..ops.inputs import make_inputs

SIZES = {"paper": dict(Bt=32, M=3, D=256, N=64, L=50)}
SIZES.update({f"L{L}": dict(Bt=8, M=3, D=256, N=16, L=L) for L in (512, 1024, 2048, 4096, 8192, 16384)})
QUICK_SIZES = {"paper-quick": dict(Bt=4, M=3, D=64, N=16, L=50), "L512-quick": dict(Bt=2, M=3, D=64, N=16, L=512)}


def cuda_time(fn, repeats: int) -> float:
    """Median seconds of fn() over `repeats` runs after a warm-up, timed with CUDA events."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) / 1e3)
    return statistics.median(times)


def copy_bandwidth(repeats: int) -> float:
    """Bytes per second of a 1 GiB device-to-device copy (read + write)."""
    src = torch.empty(1 << 28, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    seconds = cuda_time(lambda: dst.copy_(src), repeats)
    return 2 * src.numel() * 4 / seconds


def bytes_moved(s: dict, mode: str, elem: int) -> int:
    """Elements that must be read or written (docs: work and floors), in bytes."""
    seq, bc = s["Bt"] * s["M"] * s["D"] * s["L"], s["Bt"] * s["M"] * s["N"] * s["L"]
    fwd = (4 * seq + 2 * bc) * elem  # read u, delta, z, B, C; write out
    if mode == "fwd":
        return fwd
    # backward: read u, delta, z, dout, B, C; write du, d delta, dz, dB, dC in float32
    return fwd + (4 * seq + 2 * bc) * elem + (3 * seq + 2 * bc) * 4


def main(argv=None) -> None:
    from coupled_mamba import coupled_selective_scan, set_cuda_time_segments
    from coupled_mamba.ops import coupled_selective_scan_ref
    from coupled_mamba.ops.library import cuda_device_count, extension

    p = argparse.ArgumentParser(prog="python -m coupled_mamba.bench scan --device cuda", description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--sizes", nargs="*", default=None, help=f"names among {list(SIZES) + list(QUICK_SIZES)}")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--dtypes", nargs="*", default=["float32", "bfloat16"])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--ref-repeats", type=int, default=2)
    p.add_argument("--ref-max-len", type=int, default=2048, help="time the (slow) reference up to this L")
    p.add_argument("--out", default="bench_scan_cuda.json")
    args = p.parse_args(argv)
    if not torch.cuda.is_available() or cuda_device_count() == 0:
        raise SystemExit("bench scan --device cuda: no GPU visible (torch: %s, library: %d)"
                         % (torch.cuda.is_available(), cuda_device_count()))
    table = dict(QUICK_SIZES if args.quick else SIZES)
    if args.sizes:
        table = {k: {**SIZES, **QUICK_SIZES}[k] for k in args.sizes}
    dev = torch.cuda.current_device()
    name = torch.cuda.get_device_name(dev)
    bandwidth = copy_bandwidth(args.repeats)
    info = {"gpu": name, "torch": torch.__version__, "cuda": torch.version.cuda, "copy_GBps": bandwidth / 1e9}
    print(f"# coupled selective scan on {name} (torch {torch.__version__}, CUDA {torch.version.cuda}); "
          f"copy bandwidth {bandwidth / 1e9:.0f} GB/s; D, z, delta_bias, softplus")
    print(f"{'size':<12} {'dtype':<9} {'mode':<8} {'mean ms':>9} {'1-seg ms':>9} {'none ms':>9} {'mean/none':>9} "
          f"{'ref ms':>9} {'speed-up':>9} {'floor ms':>9} {'of floor':>9}")
    rows = []
    for size_name, s in table.items():
        cells = s["Bt"] * s["M"] * s["D"] * s["L"] * s["N"]
        for dtype_name in args.dtypes:
            dtype = getattr(torch, dtype_name)
            elem = torch.finfo(dtype).bits // 8
            for mode in ("fwd", "fwd+bwd"):
                grad = mode == "fwd+bwd"
                x = {k: v.cuda() for k, v in make_inputs(**s, initial_state=False).items()}
                x = {k: (v.to(dtype) if k in ("u", "delta", "B", "C", "z") else v).requires_grad_(grad)
                     for k, v in x.items()}

                def run(fn, coupling, xs=x):
                    with torch.set_grad_enabled(grad):
                        out = fn(**xs, delta_softplus=True, coupling=coupling)
                        if grad:
                            out.backward(torch.ones_like(out))
                            for v in xs.values():
                                v.grad = None

                mean_s = cuda_time(lambda: run(coupled_selective_scan, "mean"), args.repeats)
                none_s = cuda_time(lambda: run(coupled_selective_scan, "none"), args.repeats)
                set_cuda_time_segments(1)
                try:
                    one_s = cuda_time(lambda: run(coupled_selective_scan, "mean"), args.repeats)
                finally:
                    set_cuda_time_segments(0)
                ref_s = None
                if s["L"] <= args.ref_max_len:
                    ref_s = cuda_time(lambda: run(coupled_selective_scan_ref, "mean"), args.ref_repeats)
                exp_ms = extension().cuda_exp_floor_ms(cells * (3 if grad else 1), dev)
                mem_ms = bytes_moved(s, mode, elem) / bandwidth * 1e3
                floor_ms = max(exp_ms, mem_ms)
                row = dict(size=size_name, **s, cells=cells, dtype=dtype_name, mode=mode, mean_ms=mean_s * 1e3,
                           mean_one_segment_ms=one_s * 1e3, none_ms=none_s * 1e3, coupled_over_none=mean_s / none_s,
                           ref_ms=None if ref_s is None else ref_s * 1e3,
                           speedup=None if ref_s is None else ref_s / mean_s, exp_floor_ms=exp_ms,
                           memory_floor_ms=mem_ms, floor_ms=floor_ms, fraction_of_floor=floor_ms / (mean_s * 1e3))
                rows.append(row)
                ref_txt = f"{row['ref_ms']:>9.2f} {row['speedup']:>8.1f}x" if ref_s else f"{'-':>9} {'-':>9}"
                print(f"{size_name:<12} {dtype_name:<9} {mode:<8} {row['mean_ms']:>9.3f} {one_s * 1e3:>9.3f} "
                      f"{row['none_ms']:>9.3f} "
                      f"{row['coupled_over_none']:>9.2f} {ref_txt} {floor_ms:>9.3f} {row['fraction_of_floor']:>9.2f}",
                      flush=True)
                del x
                torch.cuda.empty_cache()
    with open(args.out, "w") as f:
        json.dump({"machine": info, "command": "python -m coupled_mamba.bench scan " + " ".join(argv or sys.argv[1:]),
                   "rows": rows}, f, indent=2)
    print(f"wrote {args.out}")
