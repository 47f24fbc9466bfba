#!/usr/bin/env bash
# The CUDA kernels run in the GPGPU-Sim simulator (functional mode) on a machine without a GPU:
# builds the CUDA library with the simulator kit's CUDA 11.8 toolchain (architecture 80 with PTX,
# shared CUDA runtime, the smaller kernel set COUPLED_MAMBA_CUDA_SIM_KERNELS) and the test binary
# tests/cpp/test_cuda_sim.cpp, then runs it under both of the kit's configurations at once:
# sm86 (101,376 bytes of opt-in shared memory per block) and a100 (166,912).
#   bash tools/sim_check.sh [--quick] [--match TEXT]
# (--match TEXT: only the scan cases whose name contains TEXT, e.g. "lengths=")
# The kit: $GPUSIM_KIT, else ../shared/gpusim next to the repository; it must be set up
# (bash "$GPUSIM_KIT/setup.sh", once per machine). Logs in build/sim/ (SIM_CHECK_DIR).
# Closing line: "N passed, M failed" over both configurations; exit status 1 on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MODE=full
MATCH=
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) MODE=quick ;;
    --match) [ $# -ge 2 ] || { echo "sim_check: --match needs a TEXT" >&2; exit 2; }; MATCH=$2; shift ;;
    *) echo "usage: bash tools/sim_check.sh [--quick] [--match TEXT]" >&2; exit 2 ;;
  esac
  shift
done
KIT=${GPUSIM_KIT:-$ROOT/../shared/gpusim}
[ -f "$KIT/env.sh" ] || { echo "sim_check: no simulator kit at $KIT (set GPUSIM_KIT)" >&2; exit 2; }
KIT=$(cd "$KIT" && pwd)
set --  # env.sh runs the simulator's setup_environment, which reads the positional arguments
# shellcheck disable=SC1091
source "$KIT/env.sh" || { echo "sim_check: the kit is not set up: bash $KIT/setup.sh" >&2; exit 2; }
OUT=${SIM_CHECK_DIR:-$ROOT/build/sim}
mkdir -p "$OUT"
T0=$SECONDS

echo "== sim_check: build (CUDA 11.8, architecture 80, simulator kernel set) =="
cmake -S . -B "$OUT/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCOUPLED_MAMBA_BUILD_TESTS=ON \
  -DCOUPLED_MAMBA_CUDA=ON -DCOUPLED_MAMBA_CUDA_ARCHITECTURES=80 -DCOUPLED_MAMBA_CUDA_SIM_KERNELS=ON \
  -DCMAKE_CUDA_COMPILER="$GPUSIM_NVCC" -DCMAKE_CUDA_HOST_COMPILER="$GPUSIM_HOST_CXX" \
  -DCUDAToolkit_ROOT="$GPUSIM_CUDA" -DCMAKE_CUDA_RUNTIME_LIBRARY=Shared \
  -DCUDA_cudart_static_LIBRARY="$GPUSIM_CUDA/lib64/libcudart.so" >"$OUT/configure.log" 2>&1 ||
  { cat "$OUT/configure.log"; exit 1; }
cmake --build "$OUT/build" --parallel 2 --target test_cuda_sim >"$OUT/build.log" 2>&1 ||
  { tail -50 "$OUT/build.log"; exit 1; }
BIN=$OUT/build/tests/cpp/test_cuda_sim
echo "built in $((SECONDS - T0)) s"

ARGS=()
[ "$MODE" = quick ] && ARGS=(--quick)
[ -n "$MATCH" ] && ARGS+=(--match "$MATCH") && MODE="$MODE (--match $MATCH)"
echo "== sim_check: $MODE cases under configurations sm86 and a100 (in parallel) =="
declare -A PID START
for cfg in sm86 a100; do
  rm -rf "$OUT/run-$cfg"
  START[$cfg]=$SECONDS
  ( GPUSIM_CONFIG=$cfg gpusim-run "$OUT/run-$cfg" "$BIN" "${ARGS[@]}" >"$OUT/$cfg.log" 2>&1
    echo "rc=$? seconds=$((SECONDS - ${START[$cfg]}))" >"$OUT/$cfg.done" ) &
  PID[$cfg]=$!
done
passed=0 failed=0 status=0
for cfg in sm86 a100; do
  wait "${PID[$cfg]}" || true
  # The simulator prints a lot per launch; the test's own lines start with these words.
  grep -E '^(ok  |FAIL|device 0|[0-9]+ scan cases|[0-9]+ passed, [0-9]+ failed)' "$OUT/$cfg.log" | sed "s/^/[$cfg] /" || true
  done_line=$(cat "$OUT/$cfg.done" 2>/dev/null || echo "rc=? seconds=?")
  closing=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$OUT/$cfg.log" | tail -1 || true)
  if [ -z "$closing" ]; then
    echo "[$cfg] no closing line: the run ended early ($done_line); last lines of $OUT/$cfg.log:"
    tail -20 "$OUT/$cfg.log"
    failed=$((failed + 1)) status=1
  else
    passed=$((passed + ${closing%% passed*}))
    f=${closing#*, }; f=${f%% failed}
    failed=$((failed + f))
  fi
  case $done_line in rc=0*) ;; *) status=1 ;; esac
  echo "[$cfg] $MODE set: $done_line"
done
echo "sim_check $MODE: $((SECONDS - T0)) s in all (build included); logs in $OUT"
echo "$passed passed, $failed failed"
[ "$status" = 0 ] && [ "$failed" = 0 ]
