"""Smoke runs of the benchmark commands (they are not timed here; docs/benchmarks.md has figures)."""
import json
import subprocess
import sys


def test_scan_benchmark_runs(tmp_path):
    out = tmp_path / "scan.json"
    subprocess.run([sys.executable, "-m", "coupled_mamba.bench", "scan", "--sizes", "paper-quick", "--repeats", "1",
                    "--min-time", "0", "--ref-repeats", "1", "--out", str(out)], check=True, capture_output=True)
    rows = json.loads(out.read_text())["rows"]
    assert {r["mode"] for r in rows} == {"fwd", "fwd+bwd"}
    assert all(r["fused_ms"] > 0 and r["ref_ms"] > 0 and r["exp_floor_ms"] > 0 for r in rows)


def test_model_benchmark_runs(tmp_path):
    out, plot = tmp_path / "model.json", tmp_path / "model.png"
    subprocess.run([sys.executable, "-m", "coupled_mamba.bench", "model", "--quick", "--repeats", "1", "--out",
                    str(out), "--plot", str(plot)], check=True, capture_output=True)
    assert json.loads(out.read_text()) and plot.stat().st_size > 0
