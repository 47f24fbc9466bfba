// The two ways a block's code runs: on the GPU (every thread runs a phase, then __syncthreads)
// and on the CPU for the tests (each phase runs for thread 0, 1, ... in turn, which is what a
// barrier between phases guarantees). The block code in forward_block.h / backward_block.h is
// written as a sequence of phases, so both executors run the very same arithmetic and indexing.
#pragma once

#include <vector>

#include "coupled_scan/math.h"

namespace coupled_scan {
namespace gpu {

// Reads one element of a sequence tensor as float; specialised for half types in scan_cuda.cu.
template <typename T>
struct SeqLoad;
template <>
struct SeqLoad<float> {
  CS_HD static float at(const float* p) { return *p; }
};

// GPU executor: the thread's private state lives in registers for the whole kernel.
template <typename Thread>
struct DeviceExec {
  Thread self;
  template <typename Phase>
  CS_HD void each(Phase&& phase) {
#if defined(__CUDA_ARCH__)
    phase(static_cast<int>(threadIdx.x), self);
    __syncthreads();
#else
    (void)phase;  // host code never runs a device executor
#endif
  }
};

// CPU executor for the emulation tests: one private state per thread, phases run thread by thread.
template <typename Thread>
struct HostExec {
  std::vector<Thread> threads;
  explicit HostExec(int n) : threads(static_cast<size_t>(n)) {}
  template <typename Phase>
  void each(Phase&& phase) {
    for (size_t t = 0; t < threads.size(); ++t) phase(static_cast<int>(t), threads[t]);
  }
};

}  // namespace gpu
}  // namespace coupled_scan
