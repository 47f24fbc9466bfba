// Helpers shared by the C++ tests: pass/fail bookkeeping, the relative error of the spec's
// tolerance table, and random problems at a given size and coupling mode.
#pragma once

#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "coupled_scan/coupled_scan.h"
#include "naive_scan.h"

using naive::Vec;

inline int g_failed = 0, g_passed = 0;

inline void check(bool ok, const std::string& what) {
  if (ok) {
    ++g_passed;
  } else {
    ++g_failed;
    std::printf("FAILED: %s\n", what.c_str());
  }
}

// Error of x against ref relative to the size of scale: sqrt(sum (x - ref)^2 / sum scale^2), or the
// absolute error where scale is all zero; infinite if x has a non-finite value.
inline double scaled_err(const Vec& x, const Vec& ref, const Vec& scale) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (!std::isfinite(x[i])) return INFINITY;
    num += (x[i] - ref[i]) * (x[i] - ref[i]);
    den += scale[i] * scale[i];
  }
  return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
}

inline double rel_err(const Vec& x, const Vec& ref) { return scaled_err(x, ref, ref); }

struct Case {
  int64_t Bt, M, D, N, L;
  std::string coupling;  // sum, mean, none, general
  bool with_optional;    // D, z, delta_bias, initial_state, d last_state
};

inline naive::Problem make_problem(const Case& c, std::mt19937_64& rng) {
  std::normal_distribution<double> normal(0.0, 1.0);
  std::uniform_real_distribution<double> unif(0.0, 1.0);
  naive::Problem p{c.Bt, c.M, c.D, c.N, c.L};
  auto fill = [&](Vec& v, size_t n, double scale, double shift) {
    v.resize(n);
    for (auto& x : v) x = shift + scale * normal(rng);
  };
  const size_t seq = c.Bt * c.M * c.D * c.L, bc = c.Bt * c.M * c.N * c.L;
  fill(p.u, seq, 1.0, 0.0);
  fill(p.delta, seq, 0.5, -1.0);
  p.A.resize(c.M * c.D * c.N);
  for (auto& x : p.A) x = -(0.5 + 1.5 * unif(rng));
  fill(p.B, bc, 1.0, 0.0);
  fill(p.C, bc, 1.0, 0.0);
  p.W.assign(c.M * c.M, 0.0);
  for (int64_t m = 0; m < c.M; ++m)
    for (int64_t i = 0; i < c.M; ++i) {
      double& w = p.W[m * c.M + i];
      if (c.coupling == "sum") w = 1.0;
      else if (c.coupling == "mean") w = 1.0 / c.M;
      else if (c.coupling == "none") w = m == i ? 1.0 : 0.0;
      else w = 0.6 * unif(rng) - 0.1;
    }
  if (c.with_optional) {
    fill(p.Dskip, c.M * c.D, 1.0, 0.0);
    fill(p.z, seq, 1.0, 0.0);
    fill(p.bias, c.M * c.D, 0.3, 0.0);
    fill(p.init, c.Bt * c.M * c.D * c.N, 1.0, 0.0);
  }
  return p;
}

template <typename T>
inline std::vector<T> cast(const Vec& v) {
  return std::vector<T>(v.begin(), v.end());
}
template <typename T>
inline Vec to_double(const std::vector<T>& v) {
  return Vec(v.begin(), v.end());
}


// Where one problem's inputs live (host vectors or device buffers); null for absent ones.
template <typename T>
struct InputPointers {
  const T *u, *delta, *A, *B, *C, *Dskip, *z, *bias, *W, *init;
};

// Forward arguments for problem p whose sequence rows are `pitch` elements apart; outputs unset.
template <typename T>
coupled_scan::ForwardArgs<T> forward_args_for(const naive::Problem& p, const InputPointers<T>& x, int64_t pitch,
                                              coupled_scan::CouplingKind kind, double alpha) {
  auto seqt = [&](const T* data, int64_t rows) {
    return coupled_scan::SeqTensor<const T>{data, p.M * rows * pitch, rows * pitch, pitch};
  };
  coupled_scan::ForwardArgs<T> f;
  f.size = {p.Bt, p.M, p.D, p.N, p.L};
  f.u = seqt(x.u, p.D);
  f.delta = seqt(x.delta, p.D);
  f.A = x.A;
  f.B = seqt(x.B, p.N);
  f.C = seqt(x.C, p.N);
  f.D = x.Dskip;
  f.z = seqt(x.z, p.D);
  f.delta_bias = x.bias;
  f.delta_softplus = p.softplus;
  f.coupling = kind;
  f.alpha = T(alpha);
  f.W = kind == coupled_scan::CouplingKind::kGeneral ? x.W : nullptr;
  f.initial_state = x.init;
  return f;
}

template <typename T>
const T* data_or_null(const std::vector<T>& v) {
  return v.empty() ? nullptr : v.data();
}

// A (rows, L) array stored with rows `pitch` >= L apart; the gaps hold NaN (never read).
template <typename T>
std::vector<T> padded_rows(const Vec& v, int64_t rows, int64_t L, int64_t pitch) {
  std::vector<T> o(rows * pitch, T(std::nan("")));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t t = 0; t < L; ++t) o[r * pitch + t] = T(v[r * L + t]);
  return o;
}

// Random dout, and d last_state when `with_dlast` (else left empty), for problem p.
inline void random_upstream(const naive::Problem& p, bool with_dlast, std::mt19937_64& rng, Vec& dout, Vec& dlast) {
  std::normal_distribution<double> normal(0.0, 1.0);
  dout.resize(p.u.size());
  for (auto& x : dout) x = normal(rng);
  dlast.clear();
  if (!with_dlast) return;
  dlast.resize(p.Bt * p.M * p.D * p.N);
  for (auto& x : dlast) x = normal(rng);
}
