// Explicit SIMD over the padded state axis, written with the compiler's vector types at the
// register width of each instruction-set build. Used by the hot loops of the CPU kernels.
#pragma once

#include <cmath>
#include <cstring>
#include <utility>

#include "chunk_inputs.h"

#ifndef CS_ISA
#error "define CS_ISA and CS_VEC_BYTES before including simd_block.h"
#endif

namespace coupled_scan {
namespace cpu {
namespace CS_ISA {  // vector widths differ per instruction-set build: keep the types apart

template <typename T, int Bytes>
struct VecOf {
  typedef T type __attribute__((vector_size(Bytes)));
};

// The native register of this build (CS_VEC_BYTES: 16 SSE2, 32 AVX2, 64 AVX-512); kLanes is a
// multiple of every width, so a padded state row is a whole number of vectors.
template <typename T>
struct Simd {
  typedef typename VecOf<T, CS_VEC_BYTES>::type V;
  static constexpr int64_t width = CS_VEC_BYTES / sizeof(T);
};
static_assert(kLanes % (CS_VEC_BYTES / sizeof(float)) == 0, "kLanes must be a multiple of the float width");

template <typename V, typename T>
CS_HD V load_block(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <typename V, typename T>
CS_HD void store_block(T* p, const V& v) {
  std::memcpy(p, &v, sizeof(v));
}

CS_HD Simd<float>::V block_exp(Simd<float>::V x) {
  return fast_exp_impl<Simd<float>::V, typename VecOf<std::uint32_t, CS_VEC_BYTES>::type>(x);
}
CS_HD Simd<double>::V block_exp(Simd<double>::V x) {
  for (int64_t j = 0; j < Simd<double>::width; ++j) x[j] = std::exp(x[j]);
  return x;
}

// Sum of the lanes by halving (deterministic order, short dependency chain, in registers).
template <typename T, int Bytes, std::size_t... I>
CS_HD T block_sum_halves(typename VecOf<T, Bytes>::type v, std::index_sequence<I...>) {
  typedef typename VecOf<T, Bytes / 2>::type Half;
  const Half lo = __builtin_shufflevector(v, v, I...);
  const Half hi = __builtin_shufflevector(v, v, (I + sizeof...(I))...);
  if constexpr (Bytes / 2 == sizeof(T)) {
    return lo[0] + hi[0];
  } else {
    return block_sum_halves<T, Bytes / 2>(lo + hi, std::make_index_sequence<sizeof...(I) / 2>());
  }
}
template <typename T, int Bytes>
CS_HD T block_sum(typename VecOf<T, Bytes>::type v) {
  return block_sum_halves<T, Bytes>(v, std::make_index_sequence<Bytes / sizeof(T) / 2>());
}
template <typename T>
CS_HD T block_sum(typename Simd<T>::V v) {
  return block_sum<T, CS_VEC_BYTES>(v);
}

// Lane sums of `width` vectors at once: lane j of lane_sums(x) is block_sum(x[j]), added in the
// same order (each level adds the low and high half of every segment), so the bits agree. Each
// level pairs vector i with vector i + Seg / 2 and interleaves their halved segments; after the
// last level the sums are in natural order. About 3 operations per vector instead of 2 log2(width).
template <int W>
constexpr int lane_sums_index(int lane, int seg, bool high) {
  const int half = seg / 2, out_seg = lane / half;
  return (out_seg % 2) * W + (out_seg / 2) * seg + (high ? half : 0) + lane % half;
}
template <typename V, int W, int Seg, std::size_t... Lane>
CS_HD V lane_sums_pair(V a, V b, std::index_sequence<Lane...>) {
  return __builtin_shufflevector(a, b, lane_sums_index<W>(Lane, Seg, false)...) +
         __builtin_shufflevector(a, b, lane_sums_index<W>(Lane, Seg, true)...);
}
template <typename V, int W, int Seg>
CS_HD V lane_sums_level(V* x) {
  if constexpr (Seg == 1) {
    return x[0];
  } else {
    for (int i = 0; i < Seg / 2; ++i)
      x[i] = lane_sums_pair<V, W, Seg>(x[i], x[i + Seg / 2], std::make_index_sequence<W>());
    return lane_sums_level<V, W, Seg / 2>(x);
  }
}
template <typename T>
CS_HD typename Simd<T>::V lane_sums(typename Simd<T>::V* x) {  // x: width vectors, overwritten
  constexpr int W = static_cast<int>(Simd<T>::width);
  return lane_sums_level<typename Simd<T>::V, W, W>(x);
}

// out^m = sum_i weights[m * M + i] h^i for the [m][n][lane] states of one channel vector (weights:
// W, or W transposed). Each state vector is loaded once; the sum runs over i in order.
template <typename T>
CS_HD void couple_states(const T* weights, int64_t M, int64_t N, const T* h, T* out) {
  typedef typename Simd<T>::V V;
  const int64_t w = Simd<T>::width;
  for (int64_t n = 0; n < N; ++n) {
    V h_n[kMaxModalities];
    for (int64_t i = 0; i < M; ++i) h_n[i] = load_block<V>(h + (i * N + n) * w);
    for (int64_t m = 0; m < M; ++m) {
      V acc = V{};
      for (int64_t i = 0; i < M; ++i) acc += weights[m * M + i] * h_n[i];
      store_block(out + (m * N + n) * w, acc);
    }
  }
}

// Channels of a block rounded up to whole SIMD vectors.
template <typename T>
CS_HD int64_t padded_block(int64_t channels) {
  const int64_t w = Simd<T>::width, cb = channel_block(channels);
  return (cb + w - 1) / w * w;
}

// Gather the per-channel inputs of one chunk into [g][k][d] rows (padding channels get dt = 0,
// which keeps their state at exactly zero), and A into [g][n][d] (once per task).
template <typename T>
CS_HD void load_block_steps(const ForwardArgs<T>& a, const Task& task, int64_t block_pitch, int64_t t0, int64_t kc,
                            T* dt_rows, T* dtu_rows, T* column, T* slope_rows = nullptr) {
  const int64_t G = task.m1 - task.m0;
  for (int64_t g = 0; g < G; ++g)
    for (int64_t j = 0; j < block_pitch; ++j) {
      const int64_t d = task.d0 + j;
      if (d < task.d1)
        load_steps(a, task.b, task.m0 + g, d, t0, kc, column, column + kChunk,
                   slope_rows ? column + 2 * kChunk : nullptr);
      for (int64_t k = 0; k < kc; ++k) {
        const int64_t at = (g * kChunk + k) * block_pitch + j;
        dt_rows[at] = d < task.d1 ? column[k] : T(0);
        dtu_rows[at] = d < task.d1 ? column[kChunk + k] : T(0);
        if (slope_rows) slope_rows[at] = d < task.d1 ? column[2 * kChunk + k] : T(0);
      }
    }
}

// Column j (one channel) of a [k][d] row block, as a contiguous array over k.
template <typename T>
CS_HD void gather_column(const T* rows, int64_t block_pitch, int64_t j, int64_t kc, T* out) {
  for (int64_t k = 0; k < kc; ++k) out[k] = rows[k * block_pitch + j];
}

template <typename T>
CS_HD void load_block_A(const ForwardArgs<T>& a, const Task& task, int64_t block_pitch, T* A_block) {
  const int64_t N = a.size.state;
  for (int64_t m = task.m0; m < task.m1; ++m)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t j = 0; j < block_pitch; ++j) {
        const int64_t d = task.d0 + j;
        const T value = d < task.d1 ? a.A[(m * a.size.channels + d) * N + n] : T(0);
        A_block[((m - task.m0) * N + n) * block_pitch + j] = value;
      }
}

// One step of one modality for one vector of channels: h = exp(dt A) (gscale g) + dt u B over
// n (B and C of the step are scalars shared by the channels), next = h or next += h, and, when
// given, copies of h (keep_h) and of exp(dt A) (keep_decay). Returns y = sum_n C h for every
// channel.
template <typename T>
CS_HD typename Simd<T>::V channel_step(const T* A, int64_t a_stride, const T* g, T gscale, const T* B, const T* C,
                                       typename Simd<T>::V dtv, typename Simd<T>::V dtuv, int64_t N, T* next,
                                       bool accumulate, T* keep_h, T* keep_decay = nullptr) {
  typedef typename Simd<T>::V V;
  const int64_t w = Simd<T>::width;
  V y = V{};
  if (accumulate) {
    for (int64_t n = 0; n < N; ++n) {
      const V decay = block_exp(dtv * load_block<V>(A + n * a_stride));
      const V h = decay * (gscale * load_block<V>(g + n * w)) + dtuv * B[n];
      y += C[n] * h;
      store_block(next + n * w, load_block<V>(next + n * w) + h);
      if (keep_h) store_block(keep_h + n * w, h);
      if (keep_decay) store_block(keep_decay + n * w, decay);
    }
  } else {
    for (int64_t n = 0; n < N; ++n) {
      const V decay = block_exp(dtv * load_block<V>(A + n * a_stride));
      const V h = decay * (gscale * load_block<V>(g + n * w)) + dtuv * B[n];
      y += C[n] * h;
      store_block(next + n * w, h);
      if (keep_h) store_block(keep_h + n * w, h);
      if (keep_decay) store_block(keep_decay + n * w, decay);
    }
  }
  return y;
}

}  // namespace CS_ISA
}  // namespace cpu
}  // namespace coupled_scan
