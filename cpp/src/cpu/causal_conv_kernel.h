// CPU kernels of the fused depthwise causal conv + SiLU (coupled_scan/causal_conv.h), one channel
// per task: the channel's weights stay in registers while all its rows pass, and its weight and
// bias gradients are summed by that task alone (deterministic without a reduction step).
#pragma once

#include "coupled_scan/causal_conv.h"
#include "coupled_scan/math.h"

#ifndef CS_ISA
#error "define CS_ISA (the instruction-set namespace) before including causal_conv_kernel.h"
#endif

namespace coupled_scan {
namespace cpu {
namespace CS_ISA {

// pre[t] = bias + sum_j w[j] x[t - (k - 1) + j] for one row; the first k - 1 steps skip the
// taps that fall before the row, the rest run as one vector loop per tap.
template <typename T>
CS_HD void conv_row(const T* x, const T* w, int64_t k, T bias, int64_t L, T* pre) {
  const int64_t head = k - 1 < L ? k - 1 : L;
  for (int64_t t = 0; t < head; ++t) {
    T acc = bias;
    for (int64_t j = k - 1 - t; j < k; ++j) acc += w[j] * x[t - (k - 1) + j];
    pre[t] = acc;
  }
#pragma omp simd
  for (int64_t t = head; t < L; ++t) pre[t] = bias;
  for (int64_t j = 0; j < k; ++j) {
    const T wj = w[j];
    const T* xs = x - (k - 1) + j;
#pragma omp simd
    for (int64_t t = head; t < L; ++t) pre[t] += wj * xs[t];
  }
}

template <typename T>
void conv_silu_forward_channel(const CausalConvArgs<T>& a, int64_t c, T* /*scratch*/) {
  const int64_t L = a.length, k = a.width;
  const T* w = a.weight + c * k;
  const T bias = a.bias ? a.bias[c] : T(0);
  for (int64_t r = 0; r < a.rows; ++r) {
    const int64_t at = (c * a.rows + r) * L;
    T* y = a.y + at;
    conv_row(a.x + at, w, k, bias, L, y);
#pragma omp simd
    for (int64_t t = 0; t < L; ++t) y[t] = y[t] * scan_sigmoid(y[t]);
  }
}

// scratch: L elements (d pre of one row).
template <typename T>
void conv_silu_backward_channel(const CausalConvBackwardArgs<T>& g, int64_t c, T* scratch) {
  const CausalConvArgs<T>& a = g.fwd;
  const int64_t L = a.length, k = a.width;
  const T* w = a.weight + c * k;
  const T bias = a.bias ? a.bias[c] : T(0);
  T dw[kMaxConvWidth] = {};
  T db = T(0);
  T* dpre = scratch;
  for (int64_t r = 0; r < a.rows; ++r) {
    const int64_t at = (c * a.rows + r) * L;
    const T* x = a.x + at;
    const T* dy = g.dy + at;
    T* dx = g.dx + at;
    conv_row(x, w, k, bias, L, dpre);
    T row_db = T(0);
#pragma omp simd reduction(+ : row_db)
    for (int64_t t = 0; t < L; ++t) {
      const T p = dpre[t], sg = scan_sigmoid(p);
      dpre[t] = dy[t] * (sg * (T(1) + p * (T(1) - sg)));
      row_db += dpre[t];
    }
    db += row_db;
    // dw[j] = sum_t dpre[t] x[t - (k - 1) + j] over the steps where that input exists.
    for (int64_t j = 0; j < k; ++j) {
      const int64_t t0 = k - 1 - j;  // first step whose tap j is inside the row
      const T* xs = x - t0;
      T acc = T(0);
#pragma omp simd reduction(+ : acc)
      for (int64_t t = t0; t < L; ++t) acc += dpre[t] * xs[t];
      dw[j] += acc;
    }
    // dx[i] = sum_j w[j] dpre[i + (k - 1) - j] over the steps that exist.
    const int64_t body = L - (k - 1) > 0 ? L - (k - 1) : 0;
#pragma omp simd
    for (int64_t i = 0; i < body; ++i) dx[i] = T(0);
    for (int64_t j = 0; j < k; ++j) {
      const T wj = w[j];
      const T* ds = dpre + (k - 1) - j;
#pragma omp simd
      for (int64_t i = 0; i < body; ++i) dx[i] += wj * ds[i];
    }
    for (int64_t i = body; i < L; ++i) {
      T acc = T(0);
      for (int64_t j = 0; j < k; ++j) {
        const int64_t t = i + (k - 1) - j;
        if (t < L) acc += w[j] * dpre[t];
      }
      dx[i] = acc;
    }
  }
  for (int64_t j = 0; j < k; ++j) g.dweight[c * k + j] = dw[j];
  if (g.dbias) g.dbias[c] = db;
}

}  // namespace CS_ISA
}  // namespace cpu
}  // namespace coupled_scan
