// CPU kernels of the fused depthwise causal conv + SiLU (coupled_scan/causal_conv.h), one channel
// per task: the channel's weights stay in registers while all its rows pass, and its weight and
// bias gradients are summed by that task alone (deterministic without a reduction step).
//
// A row runs as explicit SIMD vectors of W = Simd<T>::width steps, each computed whole in one
// pass (conv, sigmoid, and in the backward the gradients): the model's rows are short (50 steps),
// so a loop per operation costs more in loop overhead and remainders than in arithmetic. The
// vectors read their k taps (the inputs shifted by 0 .. k - 1 steps) straight from the row where
// all of them lie inside it; the steps outside a row count as zero.
#pragma once

#include <utility>

#include "coupled_scan/causal_conv.h"
#include "coupled_scan/math.h"
#include "simd_block.h"

#ifndef CS_ISA
#error "define CS_ISA (the instruction-set namespace) before including causal_conv_kernel.h"
#endif

namespace coupled_scan {
namespace cpu {
namespace CS_ISA {

// ---- Vector helpers

// The first `count` lanes of a vector from p, the rest zero (count <= width), and back.
template <typename V, typename T>
CS_HD V load_first(const T* p, int64_t count) {
  if (count == static_cast<int64_t>(sizeof(V) / sizeof(T))) return load_block<V>(p);
  V v = V{};
  for (int64_t i = 0; i < count; ++i) v[i] = p[i];
  return v;
}
template <typename V, typename T>
CS_HD void store_first(T* p, const V& v, int64_t count) {
  if (count == static_cast<int64_t>(sizeof(V) / sizeof(T))) return store_block(p, v);
  for (int64_t i = 0; i < count; ++i) p[i] = v[i];
}

// Lanes Offset .. Offset + W - 1 of the 2W lanes (a, b): with a or b zero, a shift that brings in
// zeros, in registers.
template <int Offset, typename V, std::size_t... I>
CS_HD V lanes_from_seq(V a, V b, std::index_sequence<I...>) {
  return __builtin_shufflevector(a, b, (Offset + static_cast<int>(I))...);
}
template <int Offset, typename T>
CS_HD typename Simd<T>::V lanes_from(typename Simd<T>::V a, typename Simd<T>::V b) {
  return lanes_from_seq<Offset>(a, b, std::make_index_sequence<Simd<T>::width>());
}

// v with its first `count` lanes zero.
template <typename T, std::size_t... I>
CS_HD typename Simd<T>::V drop_first_lanes_seq(typename Simd<T>::V v, int64_t count, std::index_sequence<I...>) {
  typedef typename Simd<T>::V V;
  const V lane = V{T(I)...};
  return lane >= V{} + T(count) ? v : V{};
}
template <typename T>
CS_HD typename Simd<T>::V drop_first_lanes(typename Simd<T>::V v, int64_t count) {
  return drop_first_lanes_seq<T>(v, count, std::make_index_sequence<Simd<T>::width>());
}

// sigmoid(p) lane-wise: float32 through the vectorised fast exp (the bits of scan_sigmoid's
// fast_expf), float64 through libm (block_exp).
template <typename T>
CS_HD typename Simd<T>::V block_sigmoid(typename Simd<T>::V p) {
  return T(1) / (T(1) + block_exp(-p));
}

// ---- The conv of one channel

// The weights and bias of one channel as broadcast vectors; Width > 0 fixes k at compile time.
template <int Width, typename T>
struct ConvChannel {
  typedef typename Simd<T>::V V;
  static constexpr int64_t kTaps = Width > 0 ? Width : kMaxConvWidth;  // capacity of tap arrays
  int64_t k_run;
  V w[kTaps];
  V bias;

  CS_HD ConvChannel(const T* weight, int64_t width, T b) : k_run(width), bias(V{} + b) {
    for (int64_t j = 0; j < k(); ++j) w[j] = V{} + weight[j];
  }
  CS_HD int64_t k() const { return Width > 0 ? Width : k_run; }
  // pre = bias + sum_j w[j] taps[j], tap j being step t - (k - 1) + j.
  template <typename Taps>
  CS_HD V pre(const Taps& taps) const {
    V acc = bias;
    for (int64_t j = 0; j < k(); ++j) acc += w[j] * taps[j];
    return acc;
  }
  // sum_j w[j] ahead[k - 1 - j], ahead[m] being step i + m of dpre: dx[i].
  template <typename Taps>
  CS_HD V dx(const Taps& ahead) const {
    V acc = V{};
    for (int64_t j = 0; j < k(); ++j) acc += w[j] * ahead[k() - 1 - j];
    return acc;
  }
};

// ---- Walks over a row of n steps
//
// Each calls step(t0, taps, lo, hi) for vectors t0 that together cover the row: taps[m] (m < k) is
// the vector of steps a[t0 + shift + m ..], zero outside the row; lanes [lo, hi) are the steps the
// call adds (below lo: steps of an earlier vector, the same values again; from hi: past the row).
// A step stores lanes below hi and sums lanes [lo, hi). Inside the row the taps are loaded where
// the step uses them (RowTaps); the vectors at its ends get theirs in one of two ways:
//  - k fixed at compile time and at most W + 1: shifts of the end vector in registers;
//  - else: loads from a copy of the end steps beside zeros. Slower (the loads wait for the copy's
//    stores to reach the cache), but any k works.
// Rows shorter than 2W + k go through zero-padded windows built element by element.

template <typename T>
struct RowTaps {
  const T* base;
  CS_HD typename Simd<T>::V operator[](int64_t m) const { return load_block<typename Simd<T>::V>(base + m); }
};

template <int Width, typename T>
constexpr bool kShiftEnds = Width > 0 && Width - 1 <= Simd<T>::width;

// The K taps of a vector v of steps at an end of the row. Back (the first vector): tap m is v moved
// K - 1 - m lanes up, the steps before the row zero; ahead (the last vector): tap m is v moved m
// lanes down, the steps past the row zero.
template <int K, bool Back, typename T, std::size_t... M>
CS_HD void shifted_taps(typename Simd<T>::V v, typename Simd<T>::V* taps, std::index_sequence<M...>) {
  typedef typename Simd<T>::V V;
  constexpr int W = static_cast<int>(Simd<T>::width);
  if constexpr (Back) ((taps[M] = lanes_from<W - (K - 1 - static_cast<int>(M)), T>(V{}, v)), ...);
  else ((taps[M] = lanes_from<static_cast<int>(M), T>(v, V{})), ...);
}

// Zeros beside the copies of a row's ends: the most taps can reach past it, in whole vectors.
constexpr int64_t kPad = kMaxConvWidth;

// Room for the copies of the ends of a row, with the zeros beside them.
template <typename T>
struct RowEnds {
  static constexpr int64_t W = Simd<T>::width;
  T head[2 * kPad + W];  // kPad zeros, then the first steps
  T tail[2 * W + 2 * kPad];  // the last steps, then kPad zeros
  CS_HD RowEnds() {
    for (int64_t i = 0; i < kPad; ++i) head[i] = T(0);
  }
};

// The causal taps (shift = -(k - 1)): the first vectors' taps reach before the row; the others'
// lie in it, the last one overlapping its predecessor when W does not divide n.
template <int Width, typename T, typename Step>
CS_HD void row_causal(const T* a, int64_t n, int64_t k, RowEnds<T>& ends, Step&& step) {
  typedef typename Simd<T>::V V;
  constexpr int64_t W = Simd<T>::width;
  int64_t t0 = 0;
  if constexpr (kShiftEnds<Width, T>) {
    V taps[Width];
    shifted_taps<Width, true, T>(load_block<V>(a), taps, std::make_index_sequence<Width>());
    step(0, taps, 0, W);
    t0 = W;
  } else {
    const int64_t inside = (k - 1 + W - 1) / W * W;  // the first vector whose taps lie in the row
    for (int64_t i = 0; i < inside; i += W) store_block(ends.head + kPad + i, load_block<V>(a + i));
    for (; t0 < inside; t0 += W) step(t0, RowTaps<T>{ends.head + kPad + t0 - (k - 1)}, 0, W);
  }
  for (; t0 + W <= n; t0 += W) step(t0, RowTaps<T>{a + t0 - (k - 1)}, 0, W);
  if (t0 < n) step(n - W, RowTaps<T>{a + n - W - (k - 1)}, t0 - (n - W), W);
}

// The taps ahead (shift = 0): from the row while they lie in it; then the last steps' (at most
// W + k - 2) in vectors counted back from the end of the row, the first of them overlapping.
template <int Width, typename T, typename Step>
CS_HD void row_ahead(const T* a, int64_t n, int64_t k, RowEnds<T>& ends, Step&& step) {
  typedef typename Simd<T>::V V;
  constexpr int64_t W = Simd<T>::width;
  int64_t t0 = 0;
  for (; t0 + W + k - 1 <= n; t0 += W) step(t0, RowTaps<T>{a + t0}, 0, W);
  if constexpr (kShiftEnds<Width, T>) {
    // At most 2W steps left: the vector at n - 2W has its taps in the row (k - 1 <= W).
    if (t0 < n - W) step(n - 2 * W, RowTaps<T>{a + n - 2 * W}, t0 - (n - 2 * W), W);
    V taps[Width];
    shifted_taps<Width, false, T>(load_block<V>(a + n - W), taps, std::make_index_sequence<Width>());
    step(n - W, taps, n - W < t0 ? t0 - (n - W) : 0, W);
  } else {
    const int64_t left = (n - t0 + W - 1) / W * W, start = n - left;  // start <= t0
    for (int64_t i = 0; i < left; i += W) store_block(ends.tail + i, load_block<V>(a + start + i));
    for (int64_t i = 0; i < kPad; i += W) store_block(ends.tail + left + i, V{});
    for (int64_t i = 0; i < left; i += W) step(start + i, RowTaps<T>{ends.tail + i}, i == 0 ? t0 - start : 0, W);
  }
}

// Any k and n: vectors at t0 = 0, W, 2W, ...; those with a tap outside the row read it from a
// zero-padded copy of the steps around them, written element by element.
template <typename T, typename Step>
CS_HD void row_through_windows(const T* a, int64_t n, int64_t k, int64_t shift, Step&& step) {
  constexpr int64_t W = Simd<T>::width;
  const int64_t first_inside = shift < 0 ? (-shift + W - 1) / W * W : 0;
  const int64_t last_inside = n - (W + shift + k - 1);  // the last start whose taps all lie inside
  auto edge = [&](int64_t t0) {
    T window[kMaxConvWidth - 1 + W];
    for (int64_t q = 0; q < k - 1 + W; ++q) {
      const int64_t t = t0 + shift + q;
      window[q] = t >= 0 && t < n ? a[t] : T(0);
    }
    step(t0, RowTaps<T>{window}, 0, n - t0 < W ? n - t0 : W);
  };
  int64_t t0 = 0;
  for (; t0 < n && t0 < first_inside; t0 += W) edge(t0);
  for (; t0 <= last_inside; t0 += W) step(t0, RowTaps<T>{a + t0 + shift}, 0, W);
  for (; t0 < n; t0 += W) edge(t0);
}

template <typename T>
CS_HD bool long_row(int64_t n, int64_t k) {
  return n >= 2 * Simd<T>::width + k;
}
template <int Width, typename T, typename Step>
CS_HD void walk_causal(const T* a, int64_t n, int64_t k, RowEnds<T>& ends, Step&& step) {
  if (long_row<T>(n, k)) return row_causal<Width>(a, n, k, ends, step);
  row_through_windows(a, n, k, -(k - 1), step);
}
template <int Width, typename T, typename Step>
CS_HD void walk_ahead(const T* a, int64_t n, int64_t k, RowEnds<T>& ends, Step&& step) {
  if (long_row<T>(n, k)) return row_ahead<Width>(a, n, k, ends, step);
  row_through_windows(a, n, k, 0, step);
}

// ---- Kernels

template <int Width, typename T>
CS_HD void conv_silu_forward_rows(const CausalConvArgs<T>& a, int64_t c) {
  typedef typename Simd<T>::V V;
  const int64_t L = a.length, k = a.width;
  const ConvChannel<Width, T> ch(a.weight + c * k, k, a.bias ? a.bias[c] : T(0));
  RowEnds<T> ends;
  for (int64_t r = 0; r < a.rows; ++r) {
    const int64_t at = (c * a.rows + r) * L;
    T* y = a.y + at;
    walk_causal<Width>(a.x + at, L, ch.k(), ends, [&](int64_t t0, const auto& taps, int64_t, int64_t hi) {
      const V p = ch.pre(taps);
      store_first(y + t0, p * block_sigmoid<T>(p), hi);
    });
  }
}

template <typename T>
void conv_silu_forward_channel(const CausalConvArgs<T>& a, int64_t c, T* /*scratch*/) {
  with_static_size(a.width, [&](auto K) { conv_silu_forward_rows<decltype(K)::value>(a, c); });
}

// The backward of one channel; dpre: L elements (d pre of one row).
//   dpre[t] = dy[t] silu'(pre[t]),  dx[i] = sum_j w[j] dpre[i + (k - 1) - j],
//   dw[j] = sum_i x[i] dpre[i + (k - 1) - j],  db = sum_t dpre[t]  (dpre = 0 past the row).
// The first walk over a row gives dpre; the second reads dpre ahead of each step i, the same
// values for dx and for the dw sums, which it keeps lane-wise in registers.
template <int Width, typename T>
CS_HD void conv_silu_backward_rows(const CausalConvBackwardArgs<T>& g, int64_t c, T* dpre) {
  typedef typename Simd<T>::V V;
  const CausalConvArgs<T>& a = g.fwd;
  const int64_t L = a.length, k = a.width;
  const ConvChannel<Width, T> ch(a.weight + c * k, k, a.bias ? a.bias[c] : T(0));
  V dw[ConvChannel<Width, T>::kTaps] = {};
  V db = V{};
  RowEnds<T> ends;
  for (int64_t r = 0; r < a.rows; ++r) {
    const int64_t at = (c * a.rows + r) * L;
    const T* x = a.x + at;
    const T* dy = g.dy + at;
    T* dx = g.dx + at;
    walk_causal<Width>(x, L, ch.k(), ends, [&](int64_t t0, const auto& taps, int64_t, int64_t hi) {
      const V p = ch.pre(taps);
      const V s = block_sigmoid<T>(p);
      store_first(dpre + t0, load_first<V>(dy + t0, hi) * (s * (T(1) + p * (T(1) - s))), hi);
    });
    // The sums of a row apart, then into the channel's: shorter chains of float additions.
    V row_dw[ConvChannel<Width, T>::kTaps] = {};
    V row_db = V{};
    const T* d_row = dpre;
    walk_ahead<Width>(d_row, L, ch.k(), ends, [&](int64_t t0, const auto& ahead, int64_t lo, int64_t hi) {
      store_first(dx + t0, ch.dx(ahead), hi);
      V xi = load_first<V>(x + t0, hi), d = ahead[0];  // lanes from hi: zero
      if (lo > 0) {  // lanes below lo were summed with the vector before
        xi = drop_first_lanes<T>(xi, lo);
        d = drop_first_lanes<T>(d, lo);
      }
      for (int64_t j = 0; j < ch.k(); ++j) row_dw[j] += xi * ahead[ch.k() - 1 - j];
      row_db += d;
    });
    for (int64_t j = 0; j < ch.k(); ++j) dw[j] += row_dw[j];
    db += row_db;
  }
  for (int64_t j = 0; j < k; ++j) g.dweight[c * k + j] = block_sum<T>(dw[j]);
  if (g.dbias) g.dbias[c] = block_sum<T>(db);
}

template <typename T>
void conv_silu_backward_channel(const CausalConvBackwardArgs<T>& g, int64_t c, T* scratch) {
  with_static_size(g.fwd.width, [&](auto K) { conv_silu_backward_rows<decltype(K)::value>(g, c, scratch); });
}

}  // namespace CS_ISA
}  // namespace cpu
}  // namespace coupled_scan
