"""retain_freed_memory (coupled_mamba/train/memory.py): after it, memory a process frees is reused
without page faults. Each case runs in a subprocess, so the test process's allocator is untouched."""
import os
import platform
import subprocess
import sys

import pytest

glibc_only = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="mallopt settings are glibc's")

# retain_freed_memory, then tensors of 2 to 16 MiB allocated, written and freed one after another,
# twice; prints whether the settings were applied and the minor page faults of the second pass.
PATTERN = """
import resource, torch
from coupled_mamba.train.memory import retain_freed_memory
applied = retain_freed_memory()
def one_pass():
    for mib in range(2, 17):
        t = torch.empty(mib << 20, dtype=torch.uint8).fill_(1)
        del t
one_pass()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
one_pass()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
PAGES = sum(mib << 20 for mib in range(2, 17)) // 4096  # pages written per pass


def run_pattern(**env):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    res = subprocess.run([sys.executable, "-c", PATTERN], env={**clean, **env},
                         capture_output=True, text=True, check=True)
    applied, faults = res.stdout.split()
    return applied, int(faults)


@glibc_only
def test_freed_memory_is_reused_without_faults():
    applied, faults = run_pattern()
    assert applied == "True"
    # Measured: 0 of 34,560 pages (glibc's defaults: 9,213, the blocks above its mmap threshold).
    assert faults < 0.05 * PAGES, f"{faults} page faults in a pass that reuses freed memory ({PAGES} pages written)"


@glibc_only
def test_user_settings_are_left_alone():
    applied, _ = run_pattern(MALLOC_TRIM_THRESHOLD_="131072")
    assert applied == "False"
    applied, _ = run_pattern(GLIBC_TUNABLES="glibc.malloc.mmap_threshold=131072")
    assert applied == "False"


def test_training_entry_points_apply_it(monkeypatch):
    """The train command and the train benchmark call it before they allocate anything."""
    import coupled_mamba.bench.train_bench as train_bench
    import coupled_mamba.train.runs as runs

    calls = []
    for module in (runs, train_bench):
        monkeypatch.setattr(module, "retain_freed_memory", lambda name=module.__name__: calls.append(name) or True)
    monkeypatch.setattr(runs, "run_training", lambda *a, **k: 0)
    assert runs.main(["--epochs", "1"]) == 0
    monkeypatch.setattr(train_bench, "measure_case", lambda *a, **k: [])
    train_bench.main(["--quick", "--out", os.devnull])
    assert calls == ["coupled_mamba.train.runs", "coupled_mamba.bench.train_bench"]
