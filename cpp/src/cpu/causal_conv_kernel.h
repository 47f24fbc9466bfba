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

// ---- Step-major layout (CausalConvArgs::step_major_groups = G > 0)
//
// x[g, r, t, e]: a step's channels are contiguous, so a vector holds W channels of one step, each
// lane one channel. A task takes a block of one group's channels (whole cache lines, up to
// kConvStepMaxLines) through all rows and steps: one vector per task through all rows, striding
// 4 KB pages over time, left the prefetchers idle and ran 2-3x slower. The forward goes step by
// step over the block, rereading a step's k taps from x (its last k steps are in L1).
// Every lane's sums run in one order whatever the blocks, so any thread count gives the same bits.

// Channels per cache line (at least a vector): the unit of the blocks, so no two tasks write a line.
template <typename T>
constexpr int64_t kConvStepLine = Simd<T>::width * int64_t(sizeof(T)) >= 64 ? Simd<T>::width : 64 / int64_t(sizeof(T));
constexpr int64_t kConvStepMaxLines = 4;
// The step-major backward runs in stretches of kConvStepStretch steps, a stretch of every vector of
// the block, then the next. Walking one vector through a whole row read a line per step, `pitch`
// apart: at the model's 500-step rows that took 2.5x as long as stretches of 16 steps with a
// prefetch kConvPrefetchSteps ahead (hardware prefetchers and TLB; tools/conv_kernel_bench.cpp,
// docs/benchmarks.md); a stretch reads the block's neighbouring lines of each step together.
constexpr int64_t kConvStepStretch = 16;
constexpr int64_t kConvPrefetchSteps = 16;
template <typename T>
constexpr int64_t kConvStepMaxVectors = kConvStepMaxLines * kConvStepLine<T> / Simd<T>::width;

// Loads and stores of a vector of `count` channels (Tail: count < W, lanes past it zero).
template <bool Tail, typename T>
struct ChannelLanes {
  typedef typename Simd<T>::V V;
  int64_t count;
  CS_HD V load(const T* p) const { return Tail ? load_first<V>(p, count) : load_block<V>(p); }
  CS_HD void store(T* p, const V& v) const {
    if (Tail) store_first(p, v, count);
    else store_block(p, v);
  }
};

// Lane e from p[e * stride] (weights, bias) for `count` lanes, zero past them; and back.
template <typename T>
CS_HD typename Simd<T>::V gather_lanes(const T* p, int64_t stride, int64_t count) {
  typename Simd<T>::V v = {};
  for (int64_t e = 0; e < count; ++e) v[e] = p[e * stride];
  return v;
}
template <typename T>
CS_HD void scatter_lanes(T* p, int64_t stride, int64_t count, const typename Simd<T>::V& v) {
  for (int64_t e = 0; e < count; ++e) p[e * stride] = v[e];
}

// The vectors of a block [e_begin, e_end) of group g, their weights and bias lane-wise.
template <int Width, typename T>
struct StepBlock {
  typedef typename Simd<T>::V V;
  static constexpr int64_t W = Simd<T>::width;
  static constexpr int64_t kTaps = Width > 0 ? Width : kMaxConvWidth;
  int64_t k_run, full, tail;  // full vectors, then one of `tail` channels when tail > 0
  int64_t c0, at, pitch;      // first channel; offset of (g, 0, 0, e_begin); a step's stride
  V w[kConvStepMaxVectors<T>][kTaps];
  V bias[kConvStepMaxVectors<T>];

  CS_HD StepBlock(const CausalConvArgs<T>& a, int64_t g, int64_t e_begin, int64_t e_end) : k_run(a.width) {
    pitch = a.channels / a.step_major_groups;
    full = (e_end - e_begin) / W;
    tail = (e_end - e_begin) % W;
    c0 = g * pitch + e_begin;
    at = g * a.rows * a.length * pitch + e_begin;
    for (int64_t v = 0; v < vectors(); ++v) {
      const int64_t n = v < full ? W : tail, c = c0 + v * W;
      for (int64_t j = 0; j < k(); ++j) w[v][j] = gather_lanes(a.weight + c * k() + j, k(), n);
      bias[v] = a.bias ? gather_lanes(a.bias + c, 1, n) : V{};
    }
  }
  CS_HD int64_t k() const { return Width > 0 ? Width : k_run; }
  CS_HD int64_t vectors() const { return full + (tail > 0); }
  // f(v, lanes) for every vector of the block.
  template <typename F>
  CS_HD void each(F&& f) const {
    for (int64_t v = 0; v < full; ++v) f(v, ChannelLanes<false, T>{W});
    if (tail > 0) f(full, ChannelLanes<true, T>{tail});
  }
  // Taps j >= jlo of vector v at step t of row x (taps below jlo lie before the row: zero).
  template <typename Lanes, typename J>
  CS_HD void load_taps(const T* x, int64_t t, int64_t v, const Lanes& lanes, J jlo, V* taps) const {
    for (int64_t j = jlo; j < k(); ++j) taps[j] = lanes.load(x + (t - (k() - 1) + j) * pitch + v * W);
  }
  template <typename J>
  CS_HD V pre(int64_t v, J jlo, const V* taps) const {
    V acc = bias[v];
    for (int64_t j = jlo; j < k(); ++j) acc += w[v][j] * taps[j];
    return acc;
  }
};

template <int Width, typename T>
CS_HD void conv_steps_forward_block(const CausalConvArgs<T>& a, int64_t g, int64_t e_begin, int64_t e_end) {
  typedef typename Simd<T>::V V;
  const StepBlock<Width, T> b(a, g, e_begin, e_end);
  const int64_t L = a.length, k = b.k();
  for (int64_t r = 0; r < a.rows; ++r) {
    const T* x = a.x + b.at + r * L * b.pitch;
    T* y = a.y + b.at + r * L * b.pitch;
    auto step = [&](int64_t t, auto jlo) {
      b.each([&](int64_t v, const auto& lanes) {
        V taps[StepBlock<Width, T>::kTaps];
        b.load_taps(x, t, v, lanes, jlo, taps);
        const V p = b.pre(v, jlo, taps);
        lanes.store(y + t * b.pitch + v * b.W, p * block_sigmoid<T>(p));
      });
    };
    int64_t t = 0;
    for (; t < L && t < k - 1; ++t) step(t, k - 1 - t);
    for (; t < L; ++t) step(t, std::integral_constant<int64_t, 0>());
  }
}

// What one vector of the backward carries from a stretch of steps to the next: dpre of its last
// k - 1 steps (the ring) and its row's dweight / dbias sums.
template <int Width, typename T>
struct StepCarry {
  typedef typename Simd<T>::V V;
  static constexpr int64_t kTaps = StepBlock<Width, T>::kTaps;
  V ring[kTaps] = {};
  V dw[kTaps] = {};
  V db = V{};
};

// Steps [t0, t1) of one vector v of row r (Lanes: ChannelLanes); at the row's end (t1 = L) also
// the k - 1 zero steps past it, which complete dx of its last steps. A function of its own, k a
// compile-time constant when Width > 0 (b.k()) (as a lambda inside the block's loops, GCC made it
// a call that read k through the closure, and the taps and the ring went through the stack).
template <int Width, typename T, typename Lanes>
void conv_steps_backward_stretch(const CausalConvBackwardArgs<T>& gr, const StepBlock<Width, T>& b, int64_t r,
                                 int64_t v, const Lanes& lanes, int64_t t0, int64_t t1, StepCarry<Width, T>& carry) {
  typedef typename Simd<T>::V V;
  constexpr int64_t kTaps = StepBlock<Width, T>::kTaps, W = Simd<T>::width;
  const CausalConvArgs<T>& a = gr.fwd;
  const int64_t L = a.length, k = b.k(), pitch = b.pitch;
  const int64_t at = b.at + r * L * pitch + v * W;
  const T* x = a.x + at;
  const T* dy = gr.dy + at;
  T* dx = gr.dx + at;
  const V* w = b.w[v];
  V taps[kTaps] = {}, ring[kTaps], row_dw[kTaps];
  for (int64_t j = 0; j < kTaps; ++j) ring[j] = carry.ring[j], row_dw[j] = carry.dw[j];
  V row_db = carry.db;
  for (int64_t j = 0; j + 1 < k; ++j)  // the k - 1 inputs before t0 (zero before the row)
    if (t0 - (k - 1) + j >= 0) taps[j + 1] = lanes.load(x + (t0 - (k - 1) + j) * pitch);
  auto push = [&](V* q, const V& value) {
    for (int64_t m = 0; m + 1 < k && m + 1 < kTaps; ++m) q[m] = q[m + 1];  // kTaps: GCC's bounds warning
    q[k - 1] = value;
  };
  auto dx_at = [&](int64_t t) {  // sum_j w[j] dpre[t - j]
    V acc = V{};
    for (int64_t j = 0; j < k; ++j) acc += w[j] * ring[k - 1 - j];
    lanes.store(dx + (t - (k - 1)) * pitch, acc);
  };
  for (int64_t t = t0; t < t1; ++t) {
    if (t + kConvPrefetchSteps < L || r + 1 < a.rows) {  // the lines kConvPrefetchSteps on (maybe in the next row)
      const int64_t ahead = (t + kConvPrefetchSteps) * pitch;
      __builtin_prefetch(x + ahead, 0, 3);
      __builtin_prefetch(dy + ahead, 0, 3);
      __builtin_prefetch(dx + ahead, 1, 3);
    }
    push(taps, lanes.load(x + t * pitch));
    const V p = b.pre(v, std::integral_constant<int64_t, 0>(), taps);
    const V sg = block_sigmoid<T>(p);
    const V d = lanes.load(dy + t * pitch) * (sg * (T(1) + p * (T(1) - sg)));
    push(ring, d);
    for (int64_t j = 0; j < k; ++j) row_dw[j] += taps[j] * d;
    row_db += d;
    if (t >= k - 1) dx_at(t);
  }
  if (t1 == L)
    for (int64_t t = L; t < L + k - 1; ++t) {
      push(ring, V{});
      if (t >= k - 1) dx_at(t);
    }
  for (int64_t j = 0; j < kTaps; ++j) carry.ring[j] = ring[j], carry.dw[j] = row_dw[j];
  carry.db = row_db;
}

// The backward, a row at a time, in stretches of kConvStepStretch steps, a stretch of each vector
// of the block in turn. Within a stretch the k inputs and k dpre a step reads stay in registers
// (taps, ring, shifted one step on). Step t gives dpre[t] (pre recomputed), adds its dweight /
// dbias terms and completes dx[t - (k - 1)], whose dpre terms (steps t - (k - 1) .. t) are then
// all in the ring; k - 1 zero steps past the row complete the rest.
template <int Width, typename T>
CS_HD void conv_steps_backward_block(const CausalConvBackwardArgs<T>& gr, int64_t g, int64_t e_begin, int64_t e_end) {
  constexpr int64_t kVec = kConvStepMaxVectors<T>;
  const StepBlock<Width, T> b(gr.fwd, g, e_begin, e_end);
  const int64_t k = b.k(), W = b.W, L = gr.fwd.length;
  StepCarry<Width, T> sums[kVec];  // the channel's dweight / dbias sums, a row's added at its end
  for (int64_t r = 0; r < gr.fwd.rows; ++r) {
    StepCarry<Width, T> carry[kVec];
    for (int64_t t0 = 0; t0 < L; t0 += kConvStepStretch) {
      const int64_t t1 = t0 + kConvStepStretch < L ? t0 + kConvStepStretch : L;
      b.each([&](int64_t v, const auto& lanes) { conv_steps_backward_stretch(gr, b, r, v, lanes, t0, t1, carry[v]); });
    }
    // A row's sums apart, then into the channel's: shorter chains of float additions.
    for (int64_t v = 0; v < b.vectors(); ++v) {
      for (int64_t j = 0; j < k; ++j) sums[v].dw[j] += carry[v].dw[j];
      sums[v].db += carry[v].db;
    }
  }
  for (int64_t v = 0; v < b.vectors(); ++v) {
    const int64_t n = v < b.full ? W : b.tail, c = b.c0 + v * W;
    for (int64_t j = 0; j < k; ++j) scatter_lanes(gr.dweight + c * k + j, k, n, sums[v].dw[j]);
    if (gr.dbias) scatter_lanes(gr.dbias + c, 1, n, sums[v].db);
  }
}

// Channels [e_begin, e_end) of group g (whole lines of kConvStepLine, at most kConvStepMaxLines).
template <typename T>
void conv_steps_forward_task(const CausalConvArgs<T>& a, int64_t g, int64_t e_begin, int64_t e_end, T* /*scratch*/) {
  with_static_size(a.width, [&](auto K) { conv_steps_forward_block<decltype(K)::value>(a, g, e_begin, e_end); });
}

template <typename T>
void conv_steps_backward_task(const CausalConvBackwardArgs<T>& gr, int64_t g, int64_t e_begin, int64_t e_end,
                              T* /*scratch*/) {
  with_static_size(gr.fwd.width,
                   [&](auto K) { conv_steps_backward_block<decltype(K)::value>(gr, g, e_begin, e_end); });
}

}  // namespace CS_ISA
}  // namespace cpu
}  // namespace coupled_scan
