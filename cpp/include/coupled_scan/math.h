// Scalar formulas shared by the CPU kernels, the CUDA kernels and the tests, so that every
// back end evaluates the same expressions (softplus guard, SiLU derivative, fast exp).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

// Always inlined: the CPU kernels are compiled once per instruction set, and an out-of-line copy
// shared between those objects could carry instructions the running CPU lacks.
#if defined(__CUDACC__)
#define CS_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__) || defined(__clang__)
#define CS_HD inline __attribute__((always_inline))
#else
#define CS_HD inline
#endif

namespace coupled_scan {

template <typename T>
CS_HD T sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
}

// log1p(exp(x)), and x itself above 20 where the two agree to working precision.
template <typename T>
CS_HD T softplus(T x) {
  return x > T(20) ? x : std::log1p(std::exp(x));
}

template <typename T>
CS_HD T silu(T x) {
  return x * sigmoid(x);
}

// d/dx silu(x) = sigmoid(x) * (1 + x * (1 - sigmoid(x)))
template <typename T>
CS_HD T silu_grad(T x) {
  const T s = sigmoid(x);
  return s * (T(1) + x * (T(1) - s));
}

// Reinterpret the bits of a value (scalar or vector) as another type of the same size.
template <typename To, typename From>
CS_HD To bit_cast(const From& from) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast needs types of one size");
  To to;
  std::memcpy(&to, &from, sizeof(to));
  return to;
}

// exp for float32 with plain arithmetic and bit operations, written once for F = float (U =
// uint32) and for compiler vector types of floats (U = the matching vector of uint32), so the
// CPU kernels' explicit SIMD blocks and every scalar use compute the same values. Range
// reduction x = k ln2 + r with |r| <= ln2/2 and a degree-6 polynomial for exp(r) (relative error
// about 1e-7), evaluated in Estrin's order to keep the dependency chain short: the scan's inner
// loops are bound by the latency of this chain, not by its operation count.
// x is clamped to [-87.5, 89] and nothing else is special-cased: at the low end the scale's
// exponent field is 0, so results below about 2e-38 are exactly 0; above log(FLT_MAX) the final
// product overflows to +inf by itself; NaN passes through the clamps (comparisons are false).
constexpr float kFastExpLow = -87.5f, kFastExpHigh = 89.0f;
constexpr float kLog2e = 1.44269504088896341f, kLn2 = 0.693147180559945309f;

// fast_exp_impl for x already clamped to [kFastExpLow, kFastExpHigh] (SIMD callers clamp with
// min / max instructions, which the compiler does not form from the comparisons by itself).
template <typename F, typename U>
CS_HD F fast_exp_clamped(F xc) {
  const float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer in the low bits
  const F t = xc * kLog2e + kRound;
  const F kf = t - kRound;
  const F r = (xc - kf * 0.693359375f) - kf * -2.12194440e-4f;
  // 2 exp(r) = 2 + 2r + r^2 q(r); the factor 2 pairs with the scale 2^(k-1) below.
  const F r2 = r * r;
  const F q01 = r * 0.33333042f + 0.99999988f;
  const F q23 = r * 1.6737420e-2f + 8.3336778e-2f;
  const F q = (r2 * 2.7629226e-3f + q23) * r2 + q01;
  const F p = q * r2 + (r * 2.0f + 2.0f);
  // 2^(k-1) keeps the exponent field in range for k up to 128 (t's bits are 0x4B400000 + k, and
  // 0x4B400000 << 23 is 0 in 32 bits).
  const F scale = bit_cast<F>(U((bit_cast<U>(t) + 126u) << 23));
  return p * scale;
}

// 2^x for float32, for x already clamped to [kFastExp2Low, kFastExp2High]: the CPU kernels fold
// log2(e) into A once per task (A log2(e) instead of A), so each exp(dt A) is 2^(dt A log2(e)) and
// needs no Cody-Waite reduction: x = k + f with k = round(x) and f = x - k in [-1/2, 1/2] exactly,
// then 2 * 2^f by a degree-6 minimax polynomial (Remez, relative error 1.9e-9 before rounding; 1.2e-7,
// one ulp, in float32 over every input in range) times 2^(k-1), built in the exponent field as in
// fast_exp_clamped. At the low end k = -126 gives a scale of exactly 0, as there.
constexpr float kFastExp2Low = -126.0f, kFastExp2High = 128.0f;
// The polynomial's coefficients, of f^0 to f^6 (the AVX-512 decay in cpu/simd_block.h uses their halves).
constexpr float kExp2C0 = 2.0000000011083325f, kExp2C1 = 1.3862944114745053f, kExp2C2 = 0.48045293781279147f,
                kExp2C3 = 0.11100657553995327f, kExp2C4 = 0.019236977913045582f, kExp2C5 = 0.002679986241894828f,
                kExp2C6 = 0.00030691624317480366f;

template <typename F, typename U>
CS_HD F fast_exp2_clamped(F xc) {
  const float kRound = 12582912.0f;  // 1.5 * 2^23
  const F t = xc + kRound;
  const F f = xc - (t - kRound);
  const F f2 = f * f;
  const F p01 = f * kExp2C1 + kExp2C0;
  const F p23 = f * kExp2C3 + kExp2C2;
  const F p45 = f * kExp2C5 + kExp2C4;
  const F p = ((f2 * kExp2C6 + p45) * f2 + p23) * f2 + p01;
  const F scale = bit_cast<F>(U((bit_cast<U>(t) + 126u) << 23));
  return p * scale;
}

// x clamped to [low, high] by comparisons, for scalars and compiler vectors alike (NaN passes
// through: both comparisons are false).
template <typename F>
CS_HD F clamp_by_comparison(F x, float low, float high) {
  const F lo = F{} + low, hi = F{} + high;
  const F xc = x < lo ? lo : x;
  return xc > hi ? hi : xc;
}

template <typename F, typename U>
CS_HD F fast_exp2_impl(F x) {
  return fast_exp2_clamped<F, U>(clamp_by_comparison(x, kFastExp2Low, kFastExp2High));
}

CS_HD float fast_exp2f(float x) { return fast_exp2_impl<float, std::uint32_t>(x); }

template <typename F, typename U>
CS_HD F fast_exp_impl(F x) {
  return fast_exp_clamped<F, U>(clamp_by_comparison(x, kFastExpLow, kFastExpHigh));
}

CS_HD float fast_expf(float x) { return fast_exp_impl<float, std::uint32_t>(x); }

// log(w) for float32 with plain arithmetic (vectorisable): w = 2^k m with m in [sqrt(1/2), sqrt(2)),
// then a degree-9 polynomial in f = m - 1. Relative error about 1e-7 for normal positive w.
CS_HD float fast_logf(float w) {
  std::uint32_t bits;
  std::memcpy(&bits, &w, sizeof(bits));
  std::int32_t k = static_cast<std::int32_t>(bits >> 23) - 127;
  std::uint32_t mbits = (bits & 0x007FFFFFu) | 0x3F800000u;  // mantissa as a float in [1, 2)
  float m;
  std::memcpy(&m, &mbits, sizeof(m));
  const bool big = m > 1.41421356f;
  m = big ? 0.5f * m : m;
  k = big ? k + 1 : k;
  const float f = m - 1.0f;
  const float z = f * f;
  float p = 7.0376836292e-2f;
  p = p * f - 1.1514610310e-1f;
  p = p * f + 1.1676998740e-1f;
  p = p * f - 1.2420140846e-1f;
  p = p * f + 1.4249322787e-1f;
  p = p * f - 1.6668057665e-1f;
  p = p * f + 2.0000714765e-1f;
  p = p * f - 2.4999993993e-1f;
  p = p * f + 3.3333331174e-1f;
  const float kf = static_cast<float>(k);
  float y = f * z * p - 0.5f * z + kf * -2.12194440e-4f;
  return f + y + kf * 0.693359375f;
}

// softplus for float32 without libm calls: max(x, 0) + log1p(exp(-|x|)), where log1p(e) is
// evaluated as log(1 + e) * e / ((1 + e) - 1) to keep full relative accuracy for tiny e. With
// kWithSigmoid, also sigmoid(x) into *sig from the same e = exp(-|x|): 1 / (1 + e) for x >= 0,
// e / (1 + e) below (the backward needs both; one exponential instead of two).
template <bool kWithSigmoid>
CS_HD float fast_softplus_impl(float x, float* sig) {
  const float ax = x < 0.0f ? -x : x;
  const float e = fast_expf(-ax);
  const float w = 1.0f + e;
  const float lp = w == 1.0f ? e : fast_logf(w) * (e / (w - 1.0f));
  const float r = (x > 0.0f ? x : 0.0f) + lp;
  if (kWithSigmoid) *sig = (x < 0.0f ? e : 1.0f) / w;
  return x > 20.0f ? x : r;
}

CS_HD float fast_softplusf(float x) { return fast_softplus_impl<false>(x, nullptr); }
CS_HD float fast_softplus_sigmoidf(float x, float* sig) { return fast_softplus_impl<true>(x, sig); }

CS_HD float fast_sigmoidf(float x) { return 1.0f / (1.0f + fast_expf(-x)); }

// The functions each precision uses in the kernels: fast and vectorisable for float32, libm for
// float64 (whose 1e-10 tolerance needs full accuracy).
// On the GPU the hardware exp (ex2.approx: about 2 + 1.2|x| ulp) replaces the polynomial; the
// CPU emulation of the CUDA kernels therefore tests the polynomial, well inside the tolerances.
CS_HD float scan_exp(float x) {
#if defined(__CUDA_ARCH__)
  return __expf(x);
#else
  return fast_expf(x);
#endif
}
CS_HD double scan_exp(double x) { return std::exp(x); }
CS_HD float scan_softplus(float x) { return fast_softplusf(x); }
CS_HD double scan_softplus(double x) { return softplus(x); }
CS_HD float scan_sigmoid(float x) { return fast_sigmoidf(x); }
CS_HD double scan_sigmoid(double x) { return sigmoid(x); }
// softplus(x), with sigmoid(x) (its derivative) into *sig.
CS_HD float scan_softplus_sigmoid(float x, float* sig) { return fast_softplus_sigmoidf(x, sig); }
CS_HD double scan_softplus_sigmoid(double x, double* sig) {
  *sig = sigmoid(x);
  return softplus(x);
}

}  // namespace coupled_scan
