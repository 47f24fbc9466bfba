// CPU backward kernels of the coupled selective scan (reverse recurrence of
// docs/coupled-scan.md). Same task split as the forward. For each channel and time chunk, taken
// last to first, the chunk's states are recomputed from the forward's checkpoint (keeping exp(dt A)
// and the previous states in task scratch), then the reverse recurrence runs through the chunk.
//
// Gradients summed over axes the task does not own go to per-task slots (dB, dC: per channel
// block; dA, dD, d delta_bias: per batch row; dW: per task) that the caller reduces in a fixed
// order, so the result is deterministic.
#pragma once

#include "backward_partials.h"
#include "chunk_inputs.h"
#include "simd_block.h"

#ifndef CS_ISA
#error "define CS_ISA (the instruction-set namespace) before including backward_kernel.h"
#endif

namespace coupled_scan {
namespace cpu {


namespace CS_ISA {

template <typename T>
int64_t backward_scratch(const Sizes& s, CouplingKind kind) {
  const int64_t G = modality_grouping(kind, s.modalities).width;
  const int64_t Np = padded_state(s.state), cb = channel_block(s.channels);
  const int64_t states = kind == CouplingKind::kGeneral ? G * Np : Np;
  return 4 * G * kChunk * Np     // transposed B, C and the chunk's dB, dC sums
         + kChunk * G * Np       // exp(dt A) for every step of the chunk
         + kChunk * states       // the state before every step of the chunk
         + cb * states           // reverse carry of every channel in the block
         + 8 * G * Np            // state, next, coupled, mu, new carry (2), rho, A rows
         + 8 * G * kChunk        // dt, dt*u, slope, y, dy, sum_n lambda B, sum_n mu g A
         + G * G;                // dW of the task
}

// Gate: dy = dout * silu(z), dz = dout * y * silu'(z) with y = sum_n C h + D u (the caller
// passes the sum over n); without z, dy = dout.
template <typename T>
CS_HD void gate_backward(const BackwardArgs<T>& a, int64_t b, int64_t m, int64_t d, int64_t t0,
                         int64_t kc, const T* y, T* dy) {
  const Sizes& s = a.fwd.size;
  const T* dout = a.dout.row(b, m, d) + t0;
  if (!a.fwd.z.data) {
    for (int64_t k = 0; k < kc; ++k) dy[k] = dout[k];
    return;
  }
  const T* z = a.fwd.z.row(b, m, d) + t0;
  const T* u = a.fwd.u.row(b, m, d) + t0;
  const T skip = a.fwd.D ? a.fwd.D[m * s.channels + d] : T(0);
  T* dz = a.dz + bmd_offset(s, b, m, d, s.length) + t0;
#pragma omp simd
  for (int64_t k = 0; k < kc; ++k) {
    const T sg = scan_sigmoid(z[k]);
    dy[k] = dout[k] * z[k] * sg;
    dz[k] = dout[k] * (y[k] + skip * u[k]) * (sg * (T(1) + z[k] * (T(1) - sg)));
  }
}

// Gradients that depend on sums over n only, for steps t0 .. t0+kc of one (b, m, d): du, d delta,
// and this row's share of dD and d delta_bias. lb = sum_n lambda B, mga = sum_n mu g A.
template <typename T>
CS_HD void input_grads(const BackwardArgs<T>& a, const BackwardPartials<T>& p, int64_t b, int64_t m,
                       int64_t d, int64_t t0, int64_t kc, const T* dt, const T* slope, const T* dy,
                       const T* lb, const T* mga) {
  const ForwardArgs<T>& f = a.fwd;
  const Sizes& s = f.size;
  const int64_t row = bmd_offset(s, b, m, d, s.length) + t0;
  const T* u = f.u.row(b, m, d) + t0;
  const T skip = f.D ? f.D[m * s.channels + d] : T(0);
  T* du = a.du + row;
  T* ddelta = a.ddelta + row;
  T sum_dD = T(0), sum_bias = T(0);
#pragma omp simd reduction(+ : sum_dD, sum_bias)
  for (int64_t k = 0; k < kc; ++k) {
    du[k] = dt[k] * lb[k] + dy[k] * skip;
    const T g = (u[k] * lb[k] + mga[k]) * slope[k];
    ddelta[k] = g;
    sum_dD += dy[k] * u[k];
    sum_bias += g;
  }
  const int64_t pm = (b * s.modalities + m) * s.channels + d;
  p.dD[pm] += sum_dD;
  p.dbias[pm] += sum_bias;
}

// Add the chunk's dB, dC sums of this block into the per-block slots (transposing back).
template <typename T>
CS_HD void store_chunk_sums(const Sizes& s, const BackwardPartials<T>& p, const Task& task,
                            int64_t t0, int64_t kc, const T* dBt, const T* dCt) {
  const int64_t N = s.state, Np = padded_state(N), L = s.length;
  for (int64_t m = task.m0; m < task.m1; ++m) {
    const int64_t g = m - task.m0;
    const int64_t base = ((task.b * p.blocks + task.block) * s.modalities + m) * N * L;
    for (int64_t n = 0; n < N; ++n) {
      T* rb = p.dB + base + n * L + t0;
      T* rc = p.dC + base + n * L + t0;
      for (int64_t k = 0; k < kc; ++k) {
        rb[k] = dBt[(g * kChunk + k) * Np + n];
        rc[k] = dCt[(g * kChunk + k) * Np + n];
      }
    }
  }
}

template <typename T>
void backward_rank_one(const BackwardArgs<T>& a, const BackwardPartials<T>& p, const Task& task,
                       T alpha, T* scratch) {
  const ForwardArgs<T>& f = a.fwd;
  const Sizes& s = f.size;
  const int64_t N = s.state, Np = padded_state(N), L = s.length, G = task.m1 - task.m0;
  const int64_t GKN = G * kChunk * Np;
  T* Bt = scratch;
  T* Ct = Bt + GKN;
  T* dBt = Ct + GKN;
  T* dCt = dBt + GKN;
  T* expo = dCt + GKN;                // [k][g][n]
  T* prev = expo + GKN;               // [k][n]: s_{t-1}
  T* carry = prev + kChunk * Np;      // [d][n]: alpha * rho_{t+1}
  T* st = carry + (task.d1 - task.d0) * Np;
  T* next = st + G * Np;
  T* rho = next + G * Np;
  T* dlast = rho + G * Np;            // [g][n]: d last_state of the channel, padded
  T* Arows = dlast + 3 * G * Np;
  T* dt = Arows + 2 * G * Np;
  T* dtu = dt + G * kChunk;
  T* y = dtu + G * kChunk;
  T* dy = y + G * kChunk;
  T* slope = dy + G * kChunk;
  T* lb = slope + G * kChunk;
  T* mga = lb + G * kChunk;

  const int64_t nch = num_chunks(L);
  for (int64_t c = nch - 1; c >= 0; --c) {
    const int64_t t0 = c * kChunk, kc = L - t0 < kChunk ? L - t0 : kChunk;
    load_transposed(f.B, task.b, task.m0, task.m1, N, t0, kc, Bt);
    load_transposed(f.C, task.b, task.m0, task.m1, N, t0, kc, Ct);
    for (int64_t i = 0; i < GKN; ++i) dBt[i] = dCt[i] = T(0);

    for (int64_t d = task.d0; d < task.d1; ++d) {
      // Recompute the chunk: states before each step, exp(dt A), and y.
      const T* ck = a.checkpoints + checkpoint_offset(s, f.coupling, task.b, d, c, task.m0);
      for (int64_t n = 0; n < Np; ++n) st[n] = n < N ? ck[n] : T(0);
      load_A_rows(f, task.m0, task.m1, d, Arows);
      for (int64_t g = 0; g < G; ++g)
        load_steps(f, task.b, task.m0 + g, d, t0, kc, dt + g * kChunk, dtu + g * kChunk, slope + g * kChunk);
      for (int64_t k = 0; k < kc; ++k) {
        T* pk = prev + k * Np;
        for (int64_t n = 0; n < Np; ++n) pk[n] = st[n];
        for (int64_t g = 0; g < G; ++g) {
          const int64_t o = g * kChunk + k;
          y[o] = state_step(Arows + g * Np, pk, alpha, Bt + o * Np, Ct + o * Np, next, expo + (k * G + g) * Np,
                            dt[o], dtu[o], N, Np, g > 0);
        }
        for (int64_t n = 0; n < Np; ++n) st[n] = next[n];
      }
      for (int64_t g = 0; g < G; ++g)
        gate_backward(a, task.b, task.m0 + g, d, t0, kc, y + g * kChunk, dy + g * kChunk);

      // Reverse through the chunk.
      T* cr = carry + (d - task.d0) * Np;
      const bool final_chunk = c == nch - 1;
      if (final_chunk) {
        for (int64_t n = 0; n < Np; ++n) cr[n] = T(0);
        for (int64_t g = 0; g < G && a.dlast_state; ++g) {
          const T* src = a.dlast_state + bmd_offset(s, task.b, task.m0 + g, d, N);
          for (int64_t n = 0; n < Np; ++n) dlast[g * Np + n] = n < N ? src[n] : T(0);
        }
      }
      for (int64_t k = kc - 1; k >= 0; --k) {
        const T* pk = prev + k * Np;
        for (int64_t g = 0; g < G; ++g) {
          const int64_t m = task.m0 + g, o = g * kChunk + k;
          // d last_state enters lambda at the final step, where the carry is still zero.
          const T* cin = final_chunk && k == kc - 1 && a.dlast_state ? dlast + g * Np : cr;
          reverse_step(Arows + g * Np, pk, alpha, Bt + o * Np, Ct + o * Np, expo + (k * G + g) * Np, cin, rho,
                       dBt + o * Np, dCt + o * Np, p.dA + bmd_offset(s, task.b, m, d, Np), dt[o], dtu[o], dy[o],
                       N, Np, g > 0, lb + o, mga + o);
        }
        for (int64_t n = 0; n < Np; ++n) cr[n] = alpha * rho[n];
      }
      for (int64_t g = 0; g < G; ++g) {
        const int64_t o = g * kChunk;
        input_grads(a, p, task.b, task.m0 + g, d, t0, kc, dt + o, slope + o, dy + o, lb + o, mga + o);
      }
      if (c == 0 && a.dinitial_state)
        for (int64_t m = task.m0; m < task.m1; ++m) {  // d h^i_{-1} = sum_m W[m, i] mu^m_0
          T* di = a.dinitial_state + bmd_offset(s, task.b, m, d, N);
          for (int64_t n = 0; n < N; ++n) di[n] = cr[n];
        }
    }
    store_chunk_sums(s, p, task, t0, kc, dBt, dCt);
  }
}

template <typename T>
void backward_general(const BackwardArgs<T>& a, const BackwardPartials<T>& p, const Task& task,
                      T* scratch) {
  const ForwardArgs<T>& f = a.fwd;
  const Sizes& s = f.size;
  const int64_t N = s.state, Np = padded_state(N), L = s.length, M = s.modalities, MN = M * Np;
  const int64_t GKN = M * kChunk * Np;
  T* Bt = scratch;
  T* Ct = Bt + GKN;
  T* dBt = Ct + GKN;
  T* dCt = dBt + GKN;
  T* expo = dCt + GKN;               // [k][m][n]
  T* prev = expo + GKN;              // [k][m][n]: h_{t-1}
  T* carry = prev + kChunk * MN;     // [d][m][n]: sum_k W[k, m] mu^k_{t+1}
  T* st = carry + (task.d1 - task.d0) * MN;
  T* next = st + MN;
  T* coupled = next + MN;
  T* mu = coupled + MN;
  T* fresh = mu + MN;
  T* Arows = fresh + 2 * MN;
  T* dt = Arows + MN;
  T* dtu = dt + M * kChunk;
  T* y = dtu + M * kChunk;
  T* dy = y + M * kChunk;
  T* slope = dy + M * kChunk;
  T* lb = slope + M * kChunk;
  T* mga = lb + M * kChunk;
  T* dW = dt + 8 * M * kChunk;
  for (int64_t i = 0; i < M * M; ++i) dW[i] = T(0);

  auto couple = [&](const T* h, int64_t m, T* gm) {  // gm = sum_i W[m, i] h^i
    for (int64_t n = 0; n < Np; ++n) gm[n] = T(0);
    for (int64_t i = 0; i < M; ++i) {
      const T w = f.W[m * M + i];
#pragma omp simd
      for (int64_t n = 0; n < Np; ++n) gm[n] += w * h[i * Np + n];
    }
  };

  const int64_t nch = num_chunks(L);
  for (int64_t c = nch - 1; c >= 0; --c) {
    const int64_t t0 = c * kChunk, kc = L - t0 < kChunk ? L - t0 : kChunk;
    load_transposed(f.B, task.b, 0, M, N, t0, kc, Bt);
    load_transposed(f.C, task.b, 0, M, N, t0, kc, Ct);
    for (int64_t i = 0; i < GKN; ++i) dBt[i] = dCt[i] = T(0);

    for (int64_t d = task.d0; d < task.d1; ++d) {
      const T* ck = a.checkpoints + checkpoint_offset(s, f.coupling, task.b, d, c, 0);
      for (int64_t m = 0; m < M; ++m)
        for (int64_t n = 0; n < Np; ++n) st[m * Np + n] = n < N ? ck[m * N + n] : T(0);
      load_A_rows(f, 0, M, d, Arows);
      for (int64_t m = 0; m < M; ++m)
        load_steps(f, task.b, m, d, t0, kc, dt + m * kChunk, dtu + m * kChunk, slope + m * kChunk);
      for (int64_t k = 0; k < kc; ++k) {
        T* pk = prev + k * MN;
        for (int64_t i = 0; i < MN; ++i) pk[i] = st[i];
        for (int64_t m = 0; m < M; ++m) {
          const int64_t o = m * kChunk + k;
          couple(pk, m, coupled);
          y[o] = state_step(Arows + m * Np, coupled, T(1), Bt + o * Np, Ct + o * Np, next + m * Np,
                            expo + (k * M + m) * Np, dt[o], dtu[o], N, Np, false);
        }
        for (int64_t i = 0; i < MN; ++i) st[i] = next[i];
      }
      for (int64_t m = 0; m < M; ++m) gate_backward(a, task.b, m, d, t0, kc, y + m * kChunk, dy + m * kChunk);

      T* cr = carry + (d - task.d0) * MN;
      if (c == nch - 1)
        for (int64_t m = 0; m < M; ++m) {
          const T* dl = a.dlast_state ? a.dlast_state + bmd_offset(s, task.b, m, d, N) : nullptr;
          for (int64_t n = 0; n < Np; ++n) cr[m * Np + n] = dl && n < N ? dl[n] : T(0);
        }
      for (int64_t k = kc - 1; k >= 0; --k) {
        const T* pk = prev + k * MN;
        for (int64_t m = 0; m < M; ++m) {
          const int64_t o = m * kChunk + k;
          couple(pk, m, coupled);
          reverse_step(Arows + m * Np, coupled, T(1), Bt + o * Np, Ct + o * Np, expo + (k * M + m) * Np,
                       cr + m * Np, mu + m * Np, dBt + o * Np, dCt + o * Np, p.dA + bmd_offset(s, task.b, m, d, Np),
                       dt[o], dtu[o], dy[o], N, Np, false, lb + o, mga + o);
        }
        for (int64_t m = 0; m < M; ++m)  // dW[m, i] += sum_n mu^m h^i_{t-1}
          for (int64_t i = 0; i < M; ++i) dW[m * M + i] += block_dot(mu + m * Np, pk + i * Np, Np);
        for (int64_t i = 0; i < M; ++i) {  // carry^i = sum_m W[m, i] mu^m
          T* ci = fresh + i * Np;
          for (int64_t n = 0; n < Np; ++n) ci[n] = T(0);
          for (int64_t m = 0; m < M; ++m) {
            const T w = f.W[m * M + i];
#pragma omp simd
            for (int64_t n = 0; n < Np; ++n) ci[n] += w * mu[m * Np + n];
          }
        }
        for (int64_t i = 0; i < MN; ++i) cr[i] = fresh[i];
      }
      for (int64_t m = 0; m < M; ++m) {
        const int64_t o = m * kChunk;
        input_grads(a, p, task.b, m, d, t0, kc, dt + o, slope + o, dy + o, lb + o, mga + o);
      }
      if (c == 0 && a.dinitial_state)
        for (int64_t m = 0; m < M; ++m) {
          T* di = a.dinitial_state + bmd_offset(s, task.b, m, d, N);
          for (int64_t n = 0; n < N; ++n) di[n] = cr[m * Np + n];
        }
    }
    store_chunk_sums(s, p, task, t0, kc, dBt, dCt);
  }
  T* slot = p.dW + (task.b * p.blocks + task.block) * M * M;
  for (int64_t i = 0; i < M * M; ++i) slot[i] = dW[i];
}

template <typename T>
void backward_task(const BackwardArgs<T>& a, const BackwardPartials<T>& p, int64_t index, T* scratch) {
  const Task task = decode_task(index, a.fwd.size, a.fwd.coupling);
  switch (a.fwd.coupling) {
    case CouplingKind::kRankOne: backward_rank_one(a, p, task, a.fwd.alpha, scratch); break;
    case CouplingKind::kNone: backward_rank_one(a, p, task, T(1), scratch); break;
    case CouplingKind::kGeneral: backward_general(a, p, task, scratch); break;
  }
}

}  // namespace CS_ISA
}  // namespace cpu
}  // namespace coupled_scan
