#!/usr/bin/env bash
# The CUDA path on a machine with a GPU and no network, in a few minutes: build the package for
# this GPU's architecture, run the GPU tests (ctest label `gpu`: cuda_device and cuda_api, the
# simulator's case set of tools/sim_check.sh on the real GPU; then pytest's CUDA tests, or the
# plain-Python op check where pytest is missing), train the main job for two epochs on the GPU,
# run the GPU benchmark, and print a summary last.
# Results go to $OUT (default: gpu_check_out/). Usage: bash tools/gpu_check.sh [--quick]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_check_out}"
mkdir -p "$OUT"
QUICK="${1:-}"
declare -a SUMMARY

step() {  # step NAME TIMEOUT_S COMMAND...: run, log to $OUT/NAME.log, remember the outcome
  local name="$1" limit="$2"
  shift 2
  echo "== $name =="
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  SUMMARY+=("$(printf '%-14s rc=%-4s %4ss' "$name" "$rc" "$((SECONDS - t0))")")
  return "$rc"
}

nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
CAP="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d ' .')"
export COUPLED_MAMBA_CUDA=ON
export COUPLED_MAMBA_CUDA_ARCHITECTURES="${CAP}-real"
JOBS="$(nproc)"

# The package as users install it; if pip cannot (no network: the image must already have
# scikit-build-core and pybind11), build the module with CMake and import it from the source tree.
if ! step install 300 python -m pip install --no-build-isolation --no-deps --quiet .; then
  step build_module 300 bash -c "cmake -S . -B build/gpu_module -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCOUPLED_MAMBA_BUILD_PYTHON=ON -DCOUPLED_MAMBA_BUILD_TESTS=OFF -DCOUPLED_MAMBA_CUDA=ON \
    -DCOUPLED_MAMBA_CUDA_ARCHITECTURES=${CAP}-real -Dpybind11_DIR=\$(python -m pybind11 --cmakedir) >/dev/null \
    && cmake --build build/gpu_module --parallel $JOBS && cp build/gpu_module/_C*.so python/coupled_mamba/"
  export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
fi
step import 60 python -c "import coupled_mamba._C as c; print('has_cuda', c.has_cuda, 'devices', c.cuda_device_count())"

step ctest_gpu 300 bash -c "cmake -S . -B build/gpu_check -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCOUPLED_MAMBA_CUDA=ON -DCOUPLED_MAMBA_CUDA_ARCHITECTURES=${CAP}-real >/dev/null \
  && cmake --build build/gpu_check --parallel $JOBS >/dev/null \
  && ctest --test-dir build/gpu_check --output-on-failure --no-tests=error"

if python -c "import pytest" 2>/dev/null; then
  step pytest_cuda 300 python -m pytest -q -x tests/python/test_scan_cuda.py -p no:cacheprovider
else
  step op_check 300 python tools/gpu_op_check.py
fi

# The main job end to end on the GPU (modules + op + training loop), two epochs. It needs the
# package's runtime dependencies (numpy, tqdm); skipped where the image lacks them.
if python -c "import numpy, tqdm" 2>/dev/null; then
  step train 180 python -m coupled_mamba.cli train --device cuda --epochs 2 --quiet --overwrite --out "$OUT/train"
fi

if [ "$QUICK" = "--quick" ]; then
  step bench 240 python -m coupled_mamba.bench scan --device cuda --quick --out "$OUT/bench_scan_cuda.json"
else
  step bench 300 python -m coupled_mamba.bench scan --device cuda --repeats 5 --ref-repeats 1 \
    --out "$OUT/bench_scan_cuda.json"
fi

echo
echo "== summary ($(head -2 "$OUT/gpu.txt" | tail -1)) =="
printf '%s\n' "${SUMMARY[@]}"
grep -E "^(size|paper|L[0-9])" "$OUT/bench.log" 2>/dev/null || true
