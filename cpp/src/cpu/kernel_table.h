// One set of CPU task kernels per instruction set; the dispatcher picks a set at run time so
// a single build runs on every x86-64 CPU and uses AVX2 / AVX-512 where present.
#pragma once

#include <cstdint>

#include "backward_partials.h"
#include "coupled_scan/causal_conv.h"
#include "coupled_scan/coupled_scan.h"

namespace coupled_scan {
namespace cpu {

template <typename T>
struct TaskKernels {
  int64_t (*forward_scratch)(const Sizes&, CouplingKind);
  int64_t (*backward_scratch)(const Sizes&, CouplingKind);
  void (*forward)(const ForwardArgs<T>&, int64_t task, T* scratch);
  void (*backward)(const BackwardArgs<T>&, const BackwardPartials<T>&, int64_t task, T* scratch);
  // dB, dC of (sample, modality) from the backward's per-block partial sums (partial_sums.h).
  void (*sum_state_partials)(const BackwardArgs<T>&, int64_t b, int64_t m, int64_t blocks, const T* pB, const T* pC,
                             T* sums);
  // The fused causal conv + SiLU, one channel per task (scratch: `length` elements).
  void (*conv_forward)(const CausalConvArgs<T>&, int64_t channel, T* scratch);
  void (*conv_backward)(const CausalConvBackwardArgs<T>&, int64_t channel, T* scratch);
  // The step-major conv (step_major_groups > 0) of channels [e_begin, e_end) of group g: whole
  // lines of conv_step_line channels, at most conv_step_max_lines; no scratch.
  int64_t conv_step_line, conv_step_max_lines;
  void (*conv_steps_forward)(const CausalConvArgs<T>&, int64_t g, int64_t e_begin, int64_t e_end, T* scratch);
  void (*conv_steps_backward)(const CausalConvBackwardArgs<T>&, int64_t g, int64_t e_begin, int64_t e_end,
                              T* scratch);
};

struct KernelTable {
  const char* isa;
  TaskKernels<float> f32;
  TaskKernels<double> f64;
};

extern const KernelTable kBaselineKernels;
#if defined(CS_HAVE_AVX2)
extern const KernelTable kAvx2Kernels;
#endif
#if defined(CS_HAVE_AVX512)
extern const KernelTable kAvx512Kernels;
#endif

}  // namespace cpu
}  // namespace coupled_scan
