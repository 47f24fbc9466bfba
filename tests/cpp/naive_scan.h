// A direct transcription of docs/coupled-scan.md for the C++ tests: double precision, dense
// (M, M) coupling for every mode, every state of every step stored. Slow and simple on purpose.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "coupled_scan/math.h"

namespace naive {

using Vec = std::vector<double>;

struct Problem {
  int64_t Bt, M, D, N, L;
  Vec u, delta, A, B, C, Dskip, z, bias, W, init;  // Dskip, z, bias, init may be empty
  bool softplus = true;
  std::vector<int64_t> lengths;  // (Bt,) steps scanned per sample; empty: every sample has L
};

inline int64_t length_of(const Problem& p, int64_t b) { return p.lengths.empty() ? p.L : p.lengths[b]; }

struct Grads {
  Vec out, last;                                  // forward results
  Vec du, ddelta, dA, dB, dC, dD, dz, dbias, dW, dinit;
};

inline size_t seq(const Problem& p, int64_t b, int64_t m, int64_t r, int64_t t, int64_t R) {
  return static_cast<size_t>(((b * p.M + m) * R + r) * p.L + t);
}

// Forward and (when dout is non-empty) backward; dlast may be empty. Sample b is scanned over
// steps t < length_of(p, b) only: later steps keep the state, output 0 and get zero gradients.
// Inputs at those steps are never read.
inline Grads run(const Problem& p, const Vec& dout, const Vec& dlast) {
  const int64_t Bt = p.Bt, M = p.M, D = p.D, N = p.N, L = p.L;
  auto sidx = [&](int64_t b, int64_t m, int64_t d, int64_t n) { return static_cast<size_t>(((b * M + m) * D + d) * N + n); };
  Grads g;
  g.out.assign(Bt * M * D * L, 0.0);
  g.last.assign(Bt * M * D * N, 0.0);
  // h[t + 1] holds h_t; h[0] is the initial state. Same for the step quantities.
  std::vector<Vec> h(L + 1, Vec(Bt * M * D * N, 0.0)), a(L, Vec(Bt * M * D * N)), gg(L, Vec(Bt * M * D * N));
  Vec dt(Bt * M * D * L), pre(Bt * M * D * L), y(Bt * M * D * L);
  if (!p.init.empty()) h[0] = p.init;
  for (int64_t b = 0; b < Bt; ++b)
    for (int64_t m = 0; m < M; ++m)
      for (int64_t d = 0; d < D; ++d)
        for (int64_t t = 0; t < length_of(p, b); ++t) {
          const size_t i = seq(p, b, m, d, t, D);
          pre[i] = p.delta[i] + (p.bias.empty() ? 0.0 : p.bias[m * D + d]);
          dt[i] = p.softplus ? coupled_scan::softplus(pre[i]) : pre[i];
        }
  for (int64_t t = 0; t < L; ++t)
    for (int64_t b = 0; b < Bt; ++b)
      for (int64_t m = 0; m < M; ++m)
        for (int64_t d = 0; d < D; ++d) {
          if (t >= length_of(p, b)) {  // past the sample's length: the state is kept
            for (int64_t n = 0; n < N; ++n) h[t + 1][sidx(b, m, d, n)] = h[t][sidx(b, m, d, n)];
            continue;
          }
          const size_t i = seq(p, b, m, d, t, D);
          double acc = 0.0;
          for (int64_t n = 0; n < N; ++n) {
            double gv = 0.0;
            for (int64_t k = 0; k < M; ++k) gv += p.W[m * M + k] * h[t][sidx(b, k, d, n)];
            const double av = std::exp(dt[i] * p.A[(m * D + d) * N + n]);
            const double hv = av * gv + dt[i] * p.u[i] * p.B[seq(p, b, m, n, t, N)];
            a[t][sidx(b, m, d, n)] = av;
            gg[t][sidx(b, m, d, n)] = gv;
            h[t + 1][sidx(b, m, d, n)] = hv;
            acc += p.C[seq(p, b, m, n, t, N)] * hv;
          }
          if (!p.Dskip.empty()) acc += p.Dskip[m * D + d] * p.u[i];
          y[i] = acc;
          g.out[i] = p.z.empty() ? acc : acc * coupled_scan::silu(p.z[i]);
        }
  g.last = h[L];
  if (dout.empty()) return g;

  g.du.assign(p.u.size(), 0.0); g.ddelta.assign(p.u.size(), 0.0); g.dz.assign(p.u.size(), 0.0);
  g.dA.assign(M * D * N, 0.0); g.dB.assign(p.B.size(), 0.0); g.dC.assign(p.C.size(), 0.0);
  g.dD.assign(M * D, 0.0); g.dbias.assign(M * D, 0.0); g.dW.assign(M * M, 0.0);
  g.dinit.assign(Bt * M * D * N, 0.0);
  Vec mu_next(Bt * M * D * N, 0.0), lam(Bt * M * D * N), mu(Bt * M * D * N);
  for (int64_t t = L - 1; t >= 0; --t) {
    for (int64_t b = 0; b < Bt; ++b)
      for (int64_t m = 0; m < M; ++m)
        for (int64_t d = 0; d < D; ++d) {
          if (t >= length_of(p, b)) continue;  // mu of sample b stays 0 until its last step
          const size_t i = seq(p, b, m, d, t, D);
          double dy = dout[i];
          if (!p.z.empty()) {
            dy = dout[i] * coupled_scan::silu(p.z[i]);
            g.dz[i] = dout[i] * y[i] * coupled_scan::silu_grad(p.z[i]);
          }
          double sum_lb = 0.0, sum_mga = 0.0;
          for (int64_t n = 0; n < N; ++n) {
            const size_t s = sidx(b, m, d, n);
            double l = dy * p.C[seq(p, b, m, n, t, N)];
            for (int64_t k = 0; k < M; ++k) l += p.W[k * M + m] * mu_next[sidx(b, k, d, n)];
            if (t == length_of(p, b) - 1 && !dlast.empty()) l += dlast[s];
            lam[s] = l;
            mu[s] = a[t][s] * l;
            g.dC[seq(p, b, m, n, t, N)] += dy * h[t + 1][s];
            g.dB[seq(p, b, m, n, t, N)] += l * dt[i] * p.u[i];
            sum_lb += l * p.B[seq(p, b, m, n, t, N)];
            sum_mga += mu[s] * gg[t][s] * p.A[(m * D + d) * N + n];
            g.dA[(m * D + d) * N + n] += mu[s] * gg[t][s] * dt[i];
            for (int64_t k = 0; k < M; ++k) g.dW[m * M + k] += mu[s] * h[t][sidx(b, k, d, n)];
          }
          g.du[i] = dt[i] * sum_lb + dy * (p.Dskip.empty() ? 0.0 : p.Dskip[m * D + d]);
          double ddt = p.u[i] * sum_lb + sum_mga;
          if (p.softplus) ddt *= coupled_scan::sigmoid(pre[i]);
          g.ddelta[i] = ddt;
          g.dbias[m * D + d] += ddt;
          g.dD[m * D + d] += dy * p.u[i];
        }
    mu_next = mu;
  }
  for (int64_t b = 0; b < Bt; ++b)
    for (int64_t i = 0; i < M; ++i)
      for (int64_t d = 0; d < D; ++d)
        for (int64_t n = 0; n < N; ++n) {
          double acc = length_of(p, b) == 0 && !dlast.empty() ? dlast[sidx(b, i, d, n)] : 0.0;
          for (int64_t m = 0; m < M && length_of(p, b) > 0; ++m) acc += p.W[m * M + i] * mu_next[sidx(b, m, d, n)];
          g.dinit[sidx(b, i, d, n)] = acc;
        }
  return g;
}

}  // namespace naive
