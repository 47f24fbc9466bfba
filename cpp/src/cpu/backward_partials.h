// Slots for the backward's partial sums over axes a task does not own. Each task writes only
// its own slots; the dispatcher adds them up in a fixed order (deterministic results).
#pragma once

#include <cstdint>

namespace coupled_scan {
namespace cpu {

template <typename T>
struct BackwardPartials {
  T* dB = nullptr;     // (samples, blocks, M, L, Np): the kernels' [k][n] layout
  T* dC = nullptr;     // (samples, blocks, M, L, Np)
  T* dA = nullptr;     // (Bt, M, D, Np): state rows padded like the kernels' scratch
  T* dD = nullptr;     // (Bt, M, D)
  T* dbias = nullptr;  // (Bt, M, D)
  T* dW = nullptr;     // (Bt, blocks, M, M), general coupling only
  int64_t blocks = 0;  // channel blocks per batch row
  // The batch row of dB's and dC's first slot: 0 when they hold every sample, b when a worker runs
  // all the tasks of sample b into its own (blocks, M, L, Np) slots (see scan_cpu.cpp).
  int64_t first_sample = 0;
};

}  // namespace cpu
}  // namespace coupled_scan
