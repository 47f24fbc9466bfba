// Public C++ API of the fused depthwise causal conv + SiLU that feeds the scan in a Mamba block:
// y = silu(bias + sum_j weight[j] x[t - (width - 1) + j]), with x = 0 before the first step.
// No PyTorch inside; CPU only. Tensors are contiguous.
#pragma once

#include <cstdint>

#include "coupled_scan/coupled_scan.h"  // Status

namespace coupled_scan {

// Largest conv width the kernels take.
constexpr int64_t kMaxConvWidth = 16;

// x, y: (channels, rows, length), every row of channel c convolved with weight[c]: a channel-major
// layer passes (M * E, batch, L), so one weight serves all samples without being repeated.
//
// Step-major layout (step_major_groups = G > 0): x, y (and dy, dx) are contiguous
// (G, rows, length, channels / G), channel c = g * (channels / G) + e at [g, r, t, e]: a layer
// whose activations are token-major (the CPU layer) passes (M, batch, L, E) as it is, with no
// transposing copy.
// channels must be a multiple of G (else kInvalidSize). Same formula, weight and bias layout.
template <typename T>
struct CausalConvArgs {
  int64_t channels = 0;
  int64_t rows = 0;    // rows per channel (the batch)
  int64_t length = 0;
  int64_t width = 0;   // kernel size, 1 .. kMaxConvWidth
  const T* x = nullptr;
  const T* weight = nullptr;  // (channels, width)
  const T* bias = nullptr;    // (channels) or null
  T* y = nullptr;             // forward: (channels, rows, length)
  int num_threads = 1;
  int64_t step_major_groups = 0;  // 0: (channels, rows, length); G > 0: (G, rows, length, channels / G)
};

// Backward from dy: dx (in x's layout), dweight (channels, width), dbias (channels; may
// be null). Deterministic: each channel's sums are taken in a fixed order by one task.
template <typename T>
struct CausalConvBackwardArgs {
  CausalConvArgs<T> fwd;  // its y is ignored
  const T* dy = nullptr;
  T* dx = nullptr;
  T* dweight = nullptr;
  T* dbias = nullptr;
};

template <typename T>
Status causal_conv_silu_forward_cpu(const CausalConvArgs<T>& args);
template <typename T>
Status causal_conv_silu_backward_cpu(const CausalConvBackwardArgs<T>& args);

}  // namespace coupled_scan
