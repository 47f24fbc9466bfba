"""Smoke runs of the benchmark commands (they are not timed here; docs/benchmarks.md has figures)."""
import json
import subprocess
import sys


def test_scan_benchmark_runs(tmp_path):
    out = tmp_path / "scan.json"
    subprocess.run([sys.executable, "-m", "coupled_mamba.bench", "scan", "--sizes", "paper-quick", "--repeats", "1",
                    "--min-time", "0", "--ref-repeats", "1", "--out", str(out)], check=True, capture_output=True)
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert {r["mode"] for r in rows} == {"fwd", "fwd+bwd"}
    assert all(r["fused_ms"] > 0 and r["ref_ms"] > 0 and r["exp_floor_ms"] > 0 for r in rows)
    # The comparison with mambapy's parallel scan runs when mambapy is importable, else says why.
    mambapy = report["mambapy"]
    if mambapy["status"] == "ok":
        assert {r["mode"] for r in mambapy["rows"]} == {"fwd", "fwd+bwd"}
        assert all(r["speedup"] > 0 and r["rel_diff"] < 1e-4 for r in mambapy["rows"])
    else:
        assert "mambapy" in mambapy["status"] and not mambapy["rows"]


def test_model_benchmark_runs(tmp_path):
    out, plot = tmp_path / "model.json", tmp_path / "model.png"
    subprocess.run([sys.executable, "-m", "coupled_mamba.bench", "model", "--quick", "--repeats", "1", "--out",
                    str(out), "--plot", str(plot)], check=True, capture_output=True)
    assert json.loads(out.read_text()) and plot.stat().st_size > 0


def test_gpu_scan_benchmark_runs_or_says_why(tmp_path):
    """With a GPU: the quick GPU table is written. Without one: a clear message and a non-zero exit."""
    import torch

    from coupled_mamba.ops.library import cuda_device_count

    out = tmp_path / "scan_cuda.json"
    res = subprocess.run([sys.executable, "-m", "coupled_mamba.bench", "scan", "--device", "cuda", "--quick",
                          "--repeats", "1", "--ref-repeats", "1", "--dtypes", "float32", "--out", str(out)],
                         capture_output=True, text=True)
    if torch.cuda.is_available() and cuda_device_count() > 0:
        assert res.returncode == 0, res.stderr[-2000:]
        rows = json.loads(out.read_text())["rows"]
        assert {r["mode"] for r in rows} == {"fwd", "fwd+bwd"}
        assert all(r["mean_ms"] > 0 and r["none_ms"] > 0 and r["floor_ms"] > 0 for r in rows)
    else:
        assert res.returncode != 0 and "no GPU visible" in res.stderr


def test_train_benchmark_runs(tmp_path):
    out = tmp_path / "train.json"
    subprocess.run([sys.executable, "-m", "coupled_mamba.bench", "train", "--quick", "--repeats", "1", "--warmup", "0",
                    "--threads", "1", "--models", "coupled-mean", "transformer", "mambapy", "--out", str(out)],
                   check=True, capture_output=True)
    report = json.loads(out.read_text())
    assert report["command"].startswith("python -m coupled_mamba.bench train") and report["machine"]["cpu"]
    ok = [r for r in report["rows"] if r["status"] == "ok"]
    assert {(r["case"], r["model"]) for r in ok} >= {(c, m) for c in ("aligned", "unaligned")
                                                     for m in ("coupled-mean", "transformer")}
    assert all(r["train_ms"] > 0 and r["infer_ms"] > 0 for r in ok)
    assert all(0 < r["scan_share"] <= 1 for r in ok if r["model"] == "coupled-mean")
    assert all(0 < r["matmul_share"] < 1 and r["scan_share"] + r["matmul_share"] <= 1
               for r in ok if r["model"] == "coupled-mean")
    assert all(r["status"] == "ok" or "mambapy" in r["status"] for r in report["rows"])


def test_step_matmuls_benchmark_runs(tmp_path):
    from pathlib import Path

    out = tmp_path / "matmuls.json"
    tool = Path(__file__).resolve().parents[2] / "tools" / "step_matmuls_bench.py"
    subprocess.run([sys.executable, str(tool), "--repeats", "1", "--out", str(out)], check=True, capture_output=True)
    report = json.loads(out.read_text())
    assert len(report["rows"]) == 12 and all(r["warm_ms"] > 0 and r["cold_ms"] > 0 for r in report["rows"])
    # The layers' matmuls of one step: 3 layers of in_proj, x_proj, dt_proj and out_proj, forward and backward.
    assert abs(report["per_step"]["gflop"] - 11.68) < 0.01
    assert report["command"].endswith(f"--repeats 1 --out {out}") and "torch" in report["machine"]
