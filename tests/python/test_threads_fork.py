"""The CPU op's worker threads (cpp/src/cpu/parallel.h): OpenMP threads where the library was built
with OpenMP, std::threads in a forked child (libgomp's team does not survive fork). Both give the
op's usual results: the bits do not depend on the threads."""
import os
import subprocess
import sys

import pytest

# Parent: the op with 2 threads (a thread team exists), then fork; the child runs it again with 2
# threads and must finish with the parent's bits. Run in a subprocess with a timeout: a hang fails.
SCRIPT = """
import os, sys, torch, coupled_mamba as cm
torch.manual_seed(0)
# Inputs made before the fork: torch's own ops may not run in the child.
x, delta = torch.randn(4, 3, 40, 9), torch.randn(4, 3, 40, 9)
A, B, C = -torch.rand(3, 40, 6), torch.randn(4, 3, 6, 9), torch.randn(4, 3, 6, 9)
def run():
    cm.set_num_threads(2)
    return cm.coupled_selective_scan(x, delta, A, B, C, delta_softplus=True, coupling="mean")
ref = run()
pid = os.fork()
if pid == 0:
    os._exit(0 if torch.equal(run(), ref) else 3)
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_op_runs_in_a_forked_child():
    res = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, check=True)
    assert res.stdout.split() == ["0"], res.stdout + res.stderr
