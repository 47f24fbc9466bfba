"""The dense matmuls of one coupled-mean training step at the aligned benchmark size, timed alone
with warm caches and with cold ones, next to their sum per step.

    python tools/step_matmuls_bench.py [--threads 1] [--repeats 15] [--out step_matmuls.json]

Each of a Coupled Mamba layer's projections (python/coupled_mamba/modules/projections.py) is timed
as the layer calls it, at batch 32, L 50, M 3, d_model 128, E 256, d_state 64, dt_rank 8: "warm"
repeats the call on the same operands (they stay in the caches); "cold" first writes a 64 MB
buffer, as the scan's passes over its working set do between the projections of a step, so the
operands come from memory. The per-step sums (3 layers, calls per layer as in the step) are to be
compared with the matmuls' self time in torch.profiler over a real step (`python -m
coupled_mamba.bench train --profile`).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

M, E, ROWS, D_MODEL, R, N, LAYERS = 3, 256, 32 * 50, 128, 8, 64, 3


def cases():
    g = torch.Generator().manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=g)

    # Token-major, as the layer runs on the CPU: the branch is (M, rows, channels).
    w_in, xn, du = rnd(M, 2 * E, D_MODEL), rnd(ROWS, D_MODEL), rnd(M, ROWS, E)
    du_acc = du.clone()  # what x_proj's backward accumulates into (the other calls read du unchanged)
    out_u, dxn, dw = torch.empty(ROWS, E), torch.empty(ROWS, D_MODEL), torch.empty(E, D_MODEL)
    x_w, dt_w, x_dbl = rnd(M, R + 2 * N, E), rnd(M, E, R), rnd(M, ROWS, R + 2 * N)
    o_w, resid, dout = rnd(M, D_MODEL, E), rnd(M, ROWS, D_MODEL), rnd(M, ROWS, D_MODEL)
    # (name, call, calls per layer, multiply-adds per call)
    return [
        ("in_proj forward (per modality, u and z)", lambda: torch.mm(xn, w_in[0, :E].t(), out=out_u), 2 * M,
         E * D_MODEL * ROWS),
        ("in_proj backward, d LN(x) (mm, then addmm_)", lambda: torch.mm(du[0], w_in[0, :E], out=dxn), 2 * M,
         E * D_MODEL * ROWS),
        ("in_proj backward, d weight", lambda: torch.mm(du[0].t(), xn, out=dw), 2 * M, E * D_MODEL * ROWS),
        ("x_proj forward", lambda: torch.bmm(du, x_w.transpose(1, 2)), 1, M * (R + 2 * N) * E * ROWS),
        ("dt_proj forward", lambda: torch.bmm(x_dbl[..., :R], dt_w.transpose(1, 2)), 1, M * E * R * ROWS),
        ("dt_proj backward, d dt_r", lambda: torch.bmm(du, dt_w), 1, M * E * R * ROWS),
        ("dt_proj backward, d weight", lambda: torch.bmm(du.transpose(1, 2), x_dbl[..., :R]), 1, M * E * R * ROWS),
        ("x_proj backward, d weight", lambda: torch.bmm(x_dbl.transpose(1, 2), du), 1, M * (R + 2 * N) * E * ROWS),
        ("x_proj backward, d u (accumulated)", lambda: du_acc.baddbmm_(x_dbl, x_w), 1, M * (R + 2 * N) * E * ROWS),
        ("out_proj forward + residual", lambda: torch.baddbmm(resid, du, o_w.transpose(1, 2)), 1,
         M * E * D_MODEL * ROWS),
        ("out_proj backward, d y", lambda: torch.bmm(dout, o_w), 1, M * E * D_MODEL * ROWS),
        ("out_proj backward, d weight", lambda: torch.bmm(dout.transpose(1, 2), du), 1, M * E * D_MODEL * ROWS),
    ]


def median_ms(fn, repeats: int, sweep=None) -> float:
    fn()
    times = []
    for _ in range(repeats):
        if sweep is not None:
            sweep.mul_(1.0001)  # 64 MB through the caches, as the scan's passes do
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--out", default="step_matmuls.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    sweep = torch.ones(16 * 1024 * 1024)
    rows, total = [], {"warm_ms": 0.0, "cold_ms": 0.0, "gflop": 0.0}
    print(f"{'matmul':42s} {'calls/step':>10} {'warm ms':>8} {'GFLOP/s':>8} {'cold ms':>8} {'GFLOP/s':>8}")
    for name, fn, per_layer, macs in cases():
        warm, cold = median_ms(fn, args.repeats), median_ms(fn, args.repeats, sweep)
        calls = per_layer * LAYERS
        gflop = 2 * macs / 1e9
        rows.append({"matmul": name, "calls_per_step": calls, "warm_ms": warm, "cold_ms": cold, "gflop": gflop})
        total["warm_ms"] += warm * calls
        total["cold_ms"] += cold * calls
        total["gflop"] += gflop * calls
        print(f"{name:42s} {calls:>10} {warm:8.2f} {gflop / warm * 1e3:8.1f} {cold:8.2f} {gflop / cold * 1e3:8.1f}")
    print(f"per step (3 layers, without the front end's input projections): {total['gflop']:.2f} GFLOP, "
          f"warm {total['warm_ms']:.0f} ms, cold {total['cold_ms']:.0f} ms")
    try:  # the machine's description as the package's benchmarks record it
        from coupled_mamba.bench.train_bench import machine
        host = machine()
    except ImportError:  # the timings themselves need torch only
        host = {"torch": torch.__version__}
    record = {"command": " ".join(["python tools/step_matmuls_bench.py", *sys.argv[1:]]), "machine": host,
              "threads": args.threads, "torch": torch.__version__, "rows": rows, "per_step": total}
    with open(args.out, "w") as f:
        json.dump(record, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
