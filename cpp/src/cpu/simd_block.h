// Explicit SIMD over the padded state axis, written with the compiler's vector types at the
// register width of each instruction-set build. Used by the hot loops of the CPU kernels.
#pragma once

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include <cmath>
#include <cstring>
#include <type_traits>
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

// max(lo, x) and min(hi, max(lo, x)) as single max / min instructions (the compiler does not form
// them from the comparisons by itself): (lo > x ? lo : x), NaN passing through as the second
// operand, which is what the comparisons in fast_exp_impl give.
CS_HD Simd<float>::V max_block(float low, Simd<float>::V x) {
  typedef Simd<float>::V V;
  const V lo = V{} + low;
#if CS_VEC_BYTES == 64 && defined(__AVX512F__)
  // The masked form with every lane selected: the unmasked one reads an undefined register that
  // GCC 12 warns about.
  return _mm512_mask_max_ps(lo, 0xFFFF, lo, x);
#elif CS_VEC_BYTES == 32 && defined(__AVX__)
  return _mm256_max_ps(lo, x);
#elif CS_VEC_BYTES == 16 && defined(__SSE__)
  return _mm_max_ps(lo, x);
#else
  return x < lo ? lo : x;
#endif
}
CS_HD Simd<float>::V min_block(float high, Simd<float>::V x) {
  typedef Simd<float>::V V;
  const V hi = V{} + high;
#if CS_VEC_BYTES == 64 && defined(__AVX512F__)
  return _mm512_mask_min_ps(hi, 0xFFFF, hi, x);
#elif CS_VEC_BYTES == 32 && defined(__AVX__)
  return _mm256_min_ps(hi, x);
#elif CS_VEC_BYTES == 16 && defined(__SSE__)
  return _mm_min_ps(hi, x);
#else
  return x > hi ? hi : x;
#endif
}
CS_HD Simd<float>::V clamp_block(Simd<float>::V x, float low, float high) {
  return min_block(high, max_block(low, x));
}

typedef VecOf<std::uint32_t, CS_VEC_BYTES>::type BitsV;

// fast_exp_impl and fast_exp2_impl of a vector.
CS_HD Simd<float>::V block_exp(Simd<float>::V x) {
  return fast_exp_clamped<Simd<float>::V, BitsV>(clamp_block(x, kFastExpLow, kFastExpHigh));
}
CS_HD Simd<double>::V block_exp(Simd<double>::V x) {
  for (int64_t j = 0; j < Simd<double>::width; ++j) x[j] = std::exp(x[j]);
  return x;
}

// The decays exp(dt A) of the scan. The kernels keep A scaled by DecayBase<T>::scale (load_block_A)
// and take block_decay(dt * scaled A): for float32 that is 2^(dt A log2(e)), one operation of range
// reduction fewer than exp (fast_exp2_clamped); for float64 the scale is 1 and the decay is libm's exp.
// What is computed from the scaled A (sum_n mu g A) is multiplied by DecayBase<T>::inverse.
template <typename T>
struct DecayBase;
template <>
struct DecayBase<float> {
  static constexpr float scale = kLog2e, inverse = kLn2;
};
template <>
struct DecayBase<double> {
  static constexpr double scale = 1.0, inverse = 1.0;
};

// NonPositive: the caller knows that x <= 0 or NaN in every lane (dt >= 0 from the softplus, A <= 0:
// the model's case), so the upper clamp, one operation of about twenty per state, is left out.
// The portable decay: the clamp, then fast_exp2_clamped. block_decay of every build but AVX-512.
template <bool NonPositive>
CS_HD Simd<float>::V portable_block_decay(Simd<float>::V x) {
  const Simd<float>::V xc = NonPositive ? max_block(kFastExp2Low, x) : clamp_block(x, kFastExp2Low, kFastExp2High);
  return fast_exp2_clamped<Simd<float>::V, BitsV>(xc);
}
#if CS_VEC_BYTES == 64 && defined(__AVX512F__) && defined(__AVX512DQ__)
// AVX-512 has the range reduction and the scaling as instructions: vreduceps gives f = x - round(x)
// and vrndscaleps k = round(x) (one operation each instead of three), and vscalefps multiplies by
// 2^k (one instead of three). The same polynomial with halved coefficients gives 2^f, exactly half
// of fast_exp2_clamped's 2 * 2^f (halving is exact for normal numbers), and 2^f * 2^k equals its
// 2 * 2^f * 2^(k-1), so the bits are portable_block_decay's in every lane (tests/cpp/test_decay_isa.cpp):
// k <= -126 (x below -125.5) gives exactly 0 as the clamp and the zero scale do there, by a zero
// mask (no denormals); above 127.5 the product overflows to +inf as there, and NaN passes through
// (the mask's comparison is true for it). No clamp is needed at either end.
template <bool NonPositive>
CS_HD Simd<float>::V block_decay(Simd<float>::V x) {
  constexpr int kRoundToInt = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;  // 0 fraction bits, ties to even
  const __m512 xv = x;
  // The masked forms with every lane selected, as in max_block (GCC 12 warns about the others).
  // (Unlike an add of 1.5 * 2^23, these builtins are not contracted with the caller's dt * A into
  // an FMA, which would change the bits.)
  const __m512 f = _mm512_mask_reduce_ps(xv, 0xFFFF, xv, kRoundToInt);
  const __m512 k = _mm512_mask_roundscale_ps(xv, 0xFFFF, xv, kRoundToInt);
  const __m512 f2 = _mm512_mul_ps(f, f);
  auto half_fma = [](__m512 a, float b, __m512 c) { return _mm512_fmadd_ps(a, _mm512_set1_ps(0.5f * b), c); };
  auto half = [](float c) { return _mm512_set1_ps(0.5f * c); };
  const __m512 p01 = half_fma(f, kExp2C1, half(kExp2C0));
  const __m512 p23 = half_fma(f, kExp2C3, half(kExp2C2));
  const __m512 p45 = half_fma(f, kExp2C5, half(kExp2C4));
  const __m512 p6 = half_fma(f2, kExp2C6, p45);
  const __m512 p = _mm512_fmadd_ps(_mm512_fmadd_ps(p6, f2, p23), f2, p01);
  const __mmask16 live = _mm512_cmp_ps_mask(k, _mm512_set1_ps(kFastExp2Low), _CMP_NLE_UQ);  // k > -126 or NaN
  return _mm512_maskz_scalef_ps(live, p, k);
}
#else
template <bool NonPositive>
CS_HD Simd<float>::V block_decay(Simd<float>::V x) {
  return portable_block_decay<NonPositive>(x);
}
#endif
template <bool NonPositive>
CS_HD Simd<double>::V block_decay(Simd<double>::V x) {
  return block_exp(x);
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

// Lane sums of `width` vectors at once: lane j of the result is block_sum(x_j), added in the same
// order (each level adds the low and high half of every segment), so the bits agree. Each level
// pairs vector i with vector i + Seg / 2 and interleaves their halved segments; after the last
// level the sums are in natural order. About 3 operations per vector instead of 2 log2(width).
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
// Two sets of lane sums at once, vector x_j of both coming from leaf(j) as a VecPair, evaluated
// depth first: a pair is combined as soon as both of its halves exist, so about log2(width)
// partial vectors of each set are live instead of width (with all 2 x 16 terms of the reverse step
// computed first, they spilled: 48 stack stores and loads per 16 states). leaf(j) runs in the
// bit-reversed order of j (0, 8, 4, 12, ... for 16).
template <typename V>
struct VecPair {
  V x, y;
};
template <typename V, int W, int Seg, int I, typename Leaf>
CS_HD VecPair<V> lane_sums_node(Leaf& leaf) {
  VecPair<V> a, b;
  if constexpr (Seg == W) {
    a = leaf(I);
    b = leaf(I + Seg / 2);
  } else {
    a = lane_sums_node<V, W, Seg * 2, I>(leaf);
    b = lane_sums_node<V, W, Seg * 2, I + Seg / 2>(leaf);
  }
  return {lane_sums_pair<V, W, Seg>(a.x, b.x, std::make_index_sequence<W>()),
          lane_sums_pair<V, W, Seg>(a.y, b.y, std::make_index_sequence<W>())};
}
template <typename T, typename Leaf>
CS_HD VecPair<typename Simd<T>::V> lane_sums_depth_first(Leaf&& leaf) {
  constexpr int W = static_cast<int>(Simd<T>::width);
  static_assert(W >= 2, "lane sums of one lane");
  return lane_sums_node<typename Simd<T>::V, W, 2, 0>(leaf);
}

// Calls f(std::integral_constant<int, K>()) with K = size for the sizes the kernels fix at compile
// time (1 to 4 modalities: "none", and the usual M), K = 0 (size known at run time) otherwise.
template <typename F>
CS_HD void with_static_size(int64_t size, F&& f) {
  switch (size) {
    case 1: f(std::integral_constant<int, 1>()); break;
    case 2: f(std::integral_constant<int, 2>()); break;
    case 3: f(std::integral_constant<int, 3>()); break;
    case 4: f(std::integral_constant<int, 4>()); break;
    default: f(std::integral_constant<int, 0>()); break;
  }
}

// The step-k vectors of channel vector v from G rows [g][k][d] (dt, dt * u, dy, ...), into out[g].
template <typename T>
CS_HD void load_step_vectors(const T* rows, int64_t G, int64_t k, int64_t block_pitch, int64_t v,
                             typename Simd<T>::V* out) {
  for (int64_t g = 0; g < G; ++g)
    out[g] = load_block<typename Simd<T>::V>(rows + (g * kChunk + k) * block_pitch + v * Simd<T>::width);
}
template <typename T>
CS_HD void store_step_vectors(const typename Simd<T>::V* in, int64_t G, int64_t k, int64_t block_pitch, int64_t v,
                              T* rows) {
  for (int64_t g = 0; g < G; ++g) store_block(rows + (g * kChunk + k) * block_pitch + v * Simd<T>::width, in[g]);
}

// g^m = sum_i W[m, i] h^i of one state n, the sum over i in order: the one formula of the coupled
// state, so that the backward's reverse step (couple_states) sees the bits its recompute
// (general_step) used. wt: W row-major; h: the M modalities' vectors of state n.
template <typename T>
CS_HD typename Simd<T>::V coupled_state(const T* wt, const typename Simd<T>::V* h, int64_t m, int64_t M) {
  typename Simd<T>::V g = typename Simd<T>::V{};
  for (int64_t i = 0; i < M; ++i) g += wt[m * M + i] * h[i];
  return g;
}

// g^m = sum_i W[m, i] h^i for the [m][n][lane] states of one channel vector. Each state vector is
// loaded once. Modalities > 0 fixes M at compile time, so the M states of one n and the M^2
// weights stay in registers.
template <int Modalities, typename T>
CS_HD void couple_states_of(const T* weights, int64_t modalities, int64_t N, const T* h, T* out) {
  typedef typename Simd<T>::V V;
  const int64_t w = Simd<T>::width;
  const int64_t M = Modalities > 0 ? Modalities : modalities;
  constexpr int64_t kM = Modalities > 0 ? Modalities : kMaxModalities;
  T wt[kM * kM];
  for (int64_t i = 0; i < M * M; ++i) wt[i] = weights[i];
  for (int64_t n = 0; n < N; ++n) {
    V h_n[kM];
    for (int64_t i = 0; i < M; ++i) h_n[i] = load_block<V>(h + (i * N + n) * w);
    for (int64_t m = 0; m < M; ++m) store_block(out + (m * N + n) * w, coupled_state<T>(wt, h_n, m, M));
  }
}

template <typename T>
CS_HD void couple_states(const T* weights, int64_t M, int64_t N, const T* h, T* out) {
  with_static_size(M, [&](auto K) { couple_states_of<decltype(K)::value>(weights, M, N, h, out); });
}

// The adjoint of one step's coupling, for the [m][n][lane] values of one channel vector, in one
// pass over n with the M^2 sums in registers: dW_lanes[m][i] += sum_n mu^m h^i (lane-wise; h: the
// states before the step) and carry^i = sum_m W[m, i] mu^m (the sum over m in order). Modalities
// > 0: M at compile time.
template <int Modalities, typename T>
CS_HD void coupling_adjoint_of(const T* weights, const T* mu, const T* h, int64_t modalities, int64_t N,
                               T* dW_lanes, T* carry) {
  typedef typename Simd<T>::V V;
  const int64_t w = Simd<T>::width;
  const int64_t M = Modalities > 0 ? Modalities : modalities;
  constexpr int64_t kM = Modalities > 0 ? Modalities : kMaxModalities;
  T wt[kM * kM];
  for (int64_t i = 0; i < M * M; ++i) wt[i] = weights[i];
  V acc[kM * kM];
  for (int64_t i = 0; i < M * M; ++i) acc[i] = load_block<V>(dW_lanes + i * w);
  for (int64_t n = 0; n < N; ++n) {
    V h_n[kM], mu_n[kM];
    for (int64_t i = 0; i < M; ++i) h_n[i] = load_block<V>(h + (i * N + n) * w);
    for (int64_t m = 0; m < M; ++m) mu_n[m] = load_block<V>(mu + (m * N + n) * w);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t i = 0; i < M; ++i) acc[m * M + i] += mu_n[m] * h_n[i];
    for (int64_t i = 0; i < M; ++i) {
      V c = V{};
      for (int64_t m = 0; m < M; ++m) c += wt[m * M + i] * mu_n[m];
      store_block(carry + (i * N + n) * w, c);
    }
  }
  for (int64_t i = 0; i < M * M; ++i) store_block(dW_lanes + i * w, acc[i]);
}

template <typename T>
CS_HD void coupling_adjoint(const T* weights, const T* mu, const T* h, int64_t M, int64_t N, T* dW_lanes, T* carry) {
  with_static_size(M, [&](auto K) { coupling_adjoint_of<decltype(K)::value>(weights, mu, h, M, N, dW_lanes, carry); });
}

// Transpose of a width x width tile held as `width` vectors (row i in x[i]; afterwards x[i] is
// column i). Stage H swaps the off-diagonal H x H blocks of every 2H x 2H block: rows i and i + H
// (bit H of i clear) exchange their lanes with bit H set; stages H = width/2, ..., 1 give the
// transpose in width log2(width) shuffles.
template <int W, int H>
constexpr int transpose_index(int lane, bool second) {
  return second ? ((lane & H) ? W + lane : lane + H) : ((lane & H) ? W + lane - H : lane);
}
template <typename V, int W, int H, std::size_t... Lane>
CS_HD void transpose_stage(V* x, std::index_sequence<Lane...>) {
  for (int i = 0; i < W; ++i) {
    if (i & H) continue;
    const V a = x[i], b = x[i + H];
    x[i] = __builtin_shufflevector(a, b, transpose_index<W, H>(Lane, false)...);
    x[i + H] = __builtin_shufflevector(a, b, transpose_index<W, H>(Lane, true)...);
  }
  if constexpr (H > 1) transpose_stage<V, W, H / 2>(x, std::index_sequence<Lane...>());
}
template <typename T>
CS_HD void transpose_tile(typename Simd<T>::V* x) {
  constexpr int W = static_cast<int>(Simd<T>::width);
  transpose_stage<typename Simd<T>::V, W, W / 2>(x, std::make_index_sequence<W>());
}

// dst[c * dst_stride + r] = src[r * src_stride + c] for r < rows, c < cols: whole width x width
// tiles through transpose_tile, the edges element by element. The scan's data are row-major along
// time ([n][t], [d][t]) and its kernels' along states or channels ([k][n], [k][d]).
template <typename T>
CS_HD void transpose_rows(const T* src, int64_t src_stride, int64_t rows, int64_t cols, T* dst, int64_t dst_stride) {
  typedef typename Simd<T>::V V;
  constexpr int64_t w = Simd<T>::width;
  const int64_t rows_w = rows / w * w, cols_w = cols / w * w;
  for (int64_t r0 = 0; r0 < rows_w; r0 += w)
    for (int64_t c0 = 0; c0 < cols_w; c0 += w) {
      V x[w];
      for (int64_t i = 0; i < w; ++i) x[i] = load_block<V>(src + (r0 + i) * src_stride + c0);
      transpose_tile<T>(x);
      for (int64_t i = 0; i < w; ++i) store_block(dst + (c0 + i) * dst_stride + r0, x[i]);
    }
  for (int64_t r = 0; r < rows; ++r)  // the edges: columns past the last whole tile, then rows
    for (int64_t c = r < rows_w ? cols_w : 0; c < cols; ++c) dst[c * dst_stride + r] = src[r * src_stride + c];
}

// Copy B or C rows (n, t0 .. t0+kc) of modalities [m0, m1) into dst[g][k][n] (rows of Np, zero past
// N), so that the innermost loops run over a contiguous state axis.
template <typename T>
CS_HD void load_transposed(const SeqTensor<const T>& X, int64_t b, int64_t m0, int64_t m1, int64_t N,
                           int64_t t0, int64_t kc, T* dst) {
  const int64_t Np = padded_state(N);
  for (int64_t m = m0; m < m1; ++m) {
    T* out = dst + (m - m0) * kChunk * Np;
    if (X.step_major())  // a step's N values are contiguous already
      for (int64_t k = 0; k < kc; ++k) {
        const T* src = X.at(b, m, 0, t0 + k);
        for (int64_t n = 0; n < N; ++n) out[k * Np + n] = src[n];
      }
    else
      transpose_rows(X.row(b, m, 0) + t0, X.stride_row, N, kc, out, Np);
    for (int64_t k = 0; k < kc; ++k)
      for (int64_t n = N; n < Np; ++n) out[k * Np + n] = T(0);
  }
}

// Channels of a block rounded up to whole SIMD vectors.
template <typename T>
CS_HD int64_t padded_block(int64_t channels) {
  const int64_t w = Simd<T>::width, cb = channel_block(channels);
  return (cb + w - 1) / w * w;
}

// Gather the per-channel inputs of one chunk into [g][k][d] rows, a channel vector at a time: each
// channel's steps into a column [j][k], then tile transposes into the rows (padding channels get
// dt = 0, which keeps their state at exactly zero). columns: scratch of 3 * width * kChunk.
template <typename T>
CS_HD void load_block_steps(const ForwardArgs<T>& a, const Task& task, int64_t block_pitch, int64_t t0, int64_t kc,
                            T* dt_rows, T* dtu_rows, T* columns, T* slope_rows = nullptr) {
  if (a.u.step_major()) {  // each step's channels are contiguous: no columns, no transposes
    const StepPrefetch prefetch{task, t0, kc, task.d0, task.d1};
    prefetch.first(a.u, false);
    prefetch.first(a.delta, false);
    for (int64_t g = 0; g < task.m1 - task.m0; ++g)
      for (int64_t k = 0; k < kc; ++k) {
        prefetch.ahead(a.u, g, k, false);
        prefetch.ahead(a.delta, g, k, false);
        const int64_t at = (g * kChunk + k) * block_pitch;
        load_step_channels(a, task, block_pitch, task.m0 + g, t0 + k, dt_rows + at, dtu_rows + at,
                           slope_rows ? slope_rows + at : nullptr);
      }
    return;
  }
  const int64_t w = Simd<T>::width, G = task.m1 - task.m0;
  T* cols[3] = {columns, columns + w * kChunk, columns + 2 * w * kChunk};  // dt, dt * u, slope
  T* rows[3] = {dt_rows, dtu_rows, slope_rows};
  const int64_t parts = slope_rows ? 3 : 2;
  for (int64_t g = 0; g < G; ++g)
    for (int64_t v0 = 0; v0 < block_pitch; v0 += w) {
      for (int64_t j = 0; j < w; ++j) {
        const int64_t d = task.d0 + v0 + j;
        if (d < task.d1)
          load_steps(a, task.b, task.m0 + g, d, t0, kc, cols[0] + j * kChunk, cols[1] + j * kChunk,
                     slope_rows ? cols[2] + j * kChunk : nullptr);
        else
          for (int64_t i = 0; i < parts; ++i)
            for (int64_t k = 0; k < kc; ++k) cols[i][j * kChunk + k] = T(0);
      }
      for (int64_t i = 0; i < parts; ++i)
        transpose_rows(cols[i], kChunk, w, kc, rows[i] + g * kChunk * block_pitch + v0, block_pitch);
    }
}

// A (and the backward's dA) of a task's block are kept as [v][g][n][lane]: the G N vectors of
// channel vector v together, where the scans use them, instead of [g][n][d] rows of the block,
// whose lines each vector would share with the block's other vectors (twice the lines in L1 for
// the same values at 32 channels). vector_A_offset: where channel vector v's values start.
template <typename T>
CS_HD int64_t vector_A_offset(int64_t v, int64_t G, int64_t N) {
  return v * G * N * Simd<T>::width;
}

// A of the task's modalities and channels, scaled by DecayBase<T>::scale, in the [v][g][n][lane]
// layout (zero past the block's channels). Returns whether every exponent dt A of the task is
// <= 0 (or NaN): dt is a softplus (>= 0) and every A <= 0; step_decays then skips the upper clamp.
// Tile transposes, then one vector pass that scales and tests: an element-wise loop with the test
// in the same statement ran at several cycles per element (the flag went through memory), a tenth
// of the forward at L = 50.
template <typename T>
CS_HD bool load_block_A(const ForwardArgs<T>& a, const Task& task, int64_t block_pitch, T* A_block) {
  const int64_t N = a.size.state, G = task.m1 - task.m0, real = task.d1 - task.d0, w = Simd<T>::width;
  for (int64_t v = 0; v * w < block_pitch; ++v)
    for (int64_t g = 0; g < G; ++g) {
      T* lanes = A_block + vector_A_offset<T>(v, G, N) + g * N * w;
      const int64_t first = v * w, left = real > first ? real - first : 0;
      const int64_t count = left < w ? left : w;  // real channels in vector v
      transpose_rows(a.A + ((task.m0 + g) * a.size.channels + task.d0 + first) * N, N, count, N, lanes, w);
      for (int64_t n = 0; n < N; ++n)
        for (int64_t j = count; j < w; ++j) lanes[n * w + j] = T(0);
    }
  int positive = 0;
  const T scale = DecayBase<T>::scale;
#pragma omp simd reduction(| : positive)
  for (int64_t i = 0; i < G * N * block_pitch; ++i) {
    const T value = A_block[i] * scale;
    positive |= value > T(0);
    A_block[i] = value;
  }
  return positive == 0 && a.delta_softplus;
}

// One step of the general coupling for one vector of channels, given the step's decays
// a^m = exp(dt^m A^m) as [m][n][lane]: for every state n, g^m = sum_i W[m, i] h^i_{t-1}
// (coupled_state), h^m_t = a^m g^m + dt^m u^m B^m (B and C of the step are scalars shared by the
// channels) and y^m += C^m h^m_t. States are [m][n][lane]; h_next may be h_prev (state n's M
// values are read before any is written). One pass over n with g in registers: built as separate
// passes (g into a buffer, the update, a copy into the state), the forward stored and reloaded
// each state vector three more times than it needs, and those passes took more time than the
// exponentials. B^m, C^m rows are bc_stride apart. Modalities > 0: M at compile time.
template <int Modalities, typename T>
CS_HD void general_step_of(const T* weights, int64_t modalities, const T* decays, const T* h_prev, const T* B,
                           const T* C, int64_t bc_stride, const typename Simd<T>::V* dtuv, int64_t N, T* h_next,
                           typename Simd<T>::V* y_out) {
  typedef typename Simd<T>::V V;
  const int64_t w = Simd<T>::width;
  const int64_t M = Modalities > 0 ? Modalities : modalities;
  constexpr int64_t kM = Modalities > 0 ? Modalities : kMaxModalities;
  T wt[kM * kM];
  for (int64_t i = 0; i < M * M; ++i) wt[i] = weights[i];
  V y[kM];
  for (int64_t m = 0; m < M; ++m) y[m] = V{};
  for (int64_t n = 0; n < N; ++n) {
    V h[kM];
    for (int64_t i = 0; i < M; ++i) h[i] = load_block<V>(h_prev + (i * N + n) * w);
    for (int64_t m = 0; m < M; ++m) {
      const V next =
          load_block<V>(decays + (m * N + n) * w) * coupled_state<T>(wt, h, m, M) + dtuv[m] * B[m * bc_stride + n];
      y[m] += C[m * bc_stride + n] * next;
      store_block(h_next + (m * N + n) * w, next);
    }
  }
  for (int64_t m = 0; m < M; ++m) y_out[m] = y[m];
}

template <typename T>
CS_HD void general_step(const T* weights, int64_t M, const T* decays, const T* h_prev, const T* B, const T* C,
                        int64_t bc_stride, const typename Simd<T>::V* dtuv, int64_t N, T* h_next,
                        typename Simd<T>::V* y) {
  with_static_size(M, [&](auto K) {
    general_step_of<decltype(K)::value>(weights, M, decays, h_prev, B, C, bc_stride, dtuv, N, h_next, y);
  });
}

// exp(dt^g A^g) of one step for the modalities of a group and one channel vector, as [g][n][lane]
// (A: the vector's [g][n][lane] values, scaled by DecayBase<T>::scale, see block_decay;
// nonpositive: what load_block_A returned).
// A pass of its own: with nothing else in the loop, the exponentials of many states are in
// flight at once and their constants stay in registers.
template <typename T>
CS_HD void step_decays(const T* A, const typename Simd<T>::V* dtv, int64_t G, int64_t N, bool nonpositive,
                       T* decays) {
  typedef typename Simd<T>::V V;
  const int64_t w = Simd<T>::width;
  auto pass = [&](auto nonpositive_k) {
    for (int64_t g = 0; g < G; ++g) {
      const V dt = dtv[g];
      for (int64_t n = 0; n < N; ++n) {
        const V x = dt * load_block<V>(A + (g * N + n) * w);
        store_block(decays + (g * N + n) * w, block_decay<decltype(nonpositive_k)::value>(x));
      }
    }
  };
  if (nonpositive)
    pass(std::true_type());
  else
    pass(std::false_type());
}

// One step of a rank-one group (or of one uncoupled modality) for one channel vector, given the
// step's decays a^g = exp(dt^g A^g) as [g][n][lane]: for every state n, h^g = a^g alpha s_{t-1} +
// dt^g u^g B^g, s_t = sum_g h^g, y^g += C^g h^g. The modalities are the inner loop so that alpha
// s and the sum stay in registers; Groups > 0 fixes the group size at compile time so that the
// y^g sums stay in registers too (with a run-time size they live on the stack, and for one
// modality the chain of loads and stores through them bounds the loop). B^g, C^g rows are
// bc_stride apart. s_next may be s_prev. keep_h, when given, gets h^g as [g][n][lane].
template <int Groups, typename T>
CS_HD void rank_one_update_of(const T* decays, const T* s_prev, T alpha, const T* B, const T* C, int64_t bc_stride,
                              const typename Simd<T>::V* dtuv, int64_t group, int64_t N, T* s_next,
                              typename Simd<T>::V* y_out, T* keep_h) {
  typedef typename Simd<T>::V V;
  const int64_t w = Simd<T>::width;
  const int64_t G = Groups > 0 ? Groups : group;
  V y[Groups > 0 ? Groups : kMaxModalities];
  for (int64_t g = 0; g < G; ++g) y[g] = V{};
  for (int64_t n = 0; n < N; ++n) {
    const V scaled = alpha * load_block<V>(s_prev + n * w);
    V sum = V{};
    for (int64_t g = 0; g < G; ++g) {
      const V h = load_block<V>(decays + (g * N + n) * w) * scaled + dtuv[g] * B[g * bc_stride + n];
      y[g] += C[g * bc_stride + n] * h;
      sum += h;
      if (keep_h) store_block(keep_h + (g * N + n) * w, h);
    }
    store_block(s_next + n * w, sum);
  }
  for (int64_t g = 0; g < G; ++g) y_out[g] = y[g];
}

// step_decays then rank_one_update_of (decays: scratch of G * N vectors).
template <typename T>
CS_HD void rank_one_step(const T* A, const T* s_prev, T alpha, const T* B,
                         const T* C, int64_t bc_stride, const typename Simd<T>::V* dtv,
                         const typename Simd<T>::V* dtuv, int64_t G, int64_t N, bool nonpositive, T* s_next,
                         typename Simd<T>::V* y, T* keep_h, T* decays) {
  step_decays(A, dtv, G, N, nonpositive, decays);
  with_static_size(G, [&](auto K) {
    rank_one_update_of<decltype(K)::value>(decays, s_prev, alpha, B, C, bc_stride, dtuv, G, N, s_next, y, keep_h);
  });
}

}  // namespace CS_ISA
}  // namespace cpu
}  // namespace coupled_scan
