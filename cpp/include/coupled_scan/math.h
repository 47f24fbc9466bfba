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

// exp for float32 written with plain arithmetic and bit operations so compilers vectorise it
// inside `omp simd` loops (no libm call). Range reduction x = k ln2 + r with |r| <= ln2/2 and a
// degree-6 polynomial for exp(r): relative error about 2e-7. NaN propagates, overflow gives +inf,
// results below about 2e-38 flush to 0.
CS_HD float fast_expf(float x) {
  const float kLog2e = 1.44269504088896341f;
  const float kLn2Hi = 0.693359375f;
  const float kLn2Lo = -2.12194440e-4f;
  const float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer in the low bits
  float xc = x < -87.0f ? -87.0f : x;
  xc = xc > 88.5f ? 88.5f : xc;
  const float t = xc * kLog2e + kRound;
  const float kf = t - kRound;
  std::uint32_t tbits;
  std::memcpy(&tbits, &t, sizeof(tbits));
  const std::uint32_t k = tbits - 0x4B400000u;  // the integer k, as two's complement bits
  const float r = (xc - kf * kLn2Hi) - kf * kLn2Lo;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  // 2^(k-1) keeps the exponent field in range for k up to 128; the factor 2 restores it.
  const std::uint32_t sbits = (k + 126u) << 23;
  float scale;
  std::memcpy(&scale, &sbits, sizeof(scale));
  float result = p * scale * 2.0f;
  result = x < -87.0f ? 0.0f : result;
  result = x > 88.72f ? std::numeric_limits<float>::infinity() : result;
  return result;
}

// The exponential each precision uses in the scan: fast for float32, libm for float64 (whose
// 1e-10 tolerance needs full accuracy).
CS_HD float scan_exp(float x) { return fast_expf(x); }
CS_HD double scan_exp(double x) { return std::exp(x); }

}  // namespace coupled_scan
