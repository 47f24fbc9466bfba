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

#ifndef CS_ISA
#error "define CS_ISA (the instruction-set namespace) before including backward_kernel.h"
#endif

namespace coupled_scan {
namespace cpu {


namespace CS_ISA {

template <typename T>
int64_t backward_scratch(const Sizes& s, CouplingKind kind) {
  const int64_t G = modality_grouping(kind, s.modalities).width;
  const int64_t N = s.state, cb = channel_block(s.channels);
  const int64_t states = kind == CouplingKind::kGeneral ? G * N : N;
  return 4 * G * kChunk * N      // transposed B, C and the chunk's dB, dC sums
         + kChunk * G * N        // exp(dt A) for every step of the chunk
         + kChunk * states       // the state before every step of the chunk
         + cb * states           // reverse carry of every channel in the block
         + 6 * G * N             // state, next state, coupled state, mu, new carry, rho
         + 6 * G * kChunk        // dt, dt*u, y, dy, and scratch
         + G * G;                // dW of the task
}

// Per-chunk pieces shared by both paths.
template <typename T>
struct ChunkView {
  T* Bt; T* Ct; T* dBt; T* dCt; T* expo; T* prev;
  T *dt, *dtu, *y, *dy;
};

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
  for (int64_t k = 0; k < kc; ++k) {
    dy[k] = dout[k] * silu(z[k]);
    dz[k] = dout[k] * (y[k] + skip * u[k]) * silu_grad(z[k]);
  }
}

// Per-step gradients that depend only on sums over n: du, d delta, and the dD / d bias sums.
template <typename T>
CS_HD void step_input_grads(const BackwardArgs<T>& a, const BackwardPartials<T>& p, int64_t b,
                            int64_t m, int64_t d, int64_t t, T dtv, T dyv, T sum_lam_B,
                            T sum_mu_g_A) {
  const ForwardArgs<T>& f = a.fwd;
  const Sizes& s = f.size;
  const int64_t row = bmd_offset(s, b, m, d, s.length) + t;
  const T u = f.u.row(b, m, d)[t];
  const T skip = f.D ? f.D[m * s.channels + d] : T(0);
  a.du[row] = dtv * sum_lam_B + dyv * skip;
  T ddt = u * sum_lam_B + sum_mu_g_A;
  if (f.delta_softplus) {
    const T bias = f.delta_bias ? f.delta_bias[m * s.channels + d] : T(0);
    ddt *= sigmoid(f.delta.row(b, m, d)[t] + bias);
  }
  a.ddelta[row] = ddt;
  const int64_t pm = (b * s.modalities + m) * s.channels + d;
  p.dD[pm] += dyv * u;
  p.dbias[pm] += ddt;
}

// Add the chunk's dB, dC sums of this block into the per-block slots (transposing back).
template <typename T>
CS_HD void store_chunk_sums(const Sizes& s, const BackwardPartials<T>& p, const Task& task,
                            int64_t t0, int64_t kc, const T* dBt, const T* dCt) {
  const int64_t N = s.state, L = s.length;
  for (int64_t m = task.m0; m < task.m1; ++m) {
    const int64_t g = m - task.m0;
    const int64_t base = ((task.b * p.blocks + task.block) * s.modalities + m) * N * L;
    for (int64_t n = 0; n < N; ++n) {
      T* rb = p.dB + base + n * L + t0;
      T* rc = p.dC + base + n * L + t0;
      for (int64_t k = 0; k < kc; ++k) {
        rb[k] = dBt[(g * kChunk + k) * N + n];
        rc[k] = dCt[(g * kChunk + k) * N + n];
      }
    }
  }
}

template <typename T>
void backward_rank_one(const BackwardArgs<T>& a, const BackwardPartials<T>& p, const Task& task,
                       T alpha, T* scratch) {
  const ForwardArgs<T>& f = a.fwd;
  const Sizes& s = f.size;
  const int64_t N = s.state, L = s.length, G = task.m1 - task.m0, GKN = G * kChunk * N;
  T* Bt = scratch;
  T* Ct = Bt + GKN;
  T* dBt = Ct + GKN;
  T* dCt = dBt + GKN;
  T* expo = dCt + GKN;               // [k][g][n]
  T* prev = expo + GKN;              // [k][n]: s_{t-1}
  T* carry = prev + kChunk * N;      // [d][n]: alpha * rho_{t+1}
  T* st = carry + (task.d1 - task.d0) * N;
  T* next = st + G * N;
  T* rho = next + G * N;
  T* dt = rho + 4 * G * N;
  T* dtu = dt + G * kChunk;
  T* y = dtu + G * kChunk;
  T* dy = y + G * kChunk;

  const int64_t nch = num_chunks(L);
  for (int64_t c = nch - 1; c >= 0; --c) {
    const int64_t t0 = c * kChunk, kc = L - t0 < kChunk ? L - t0 : kChunk;
    load_transposed(f.B, task.b, task.m0, task.m1, N, t0, kc, Bt);
    load_transposed(f.C, task.b, task.m0, task.m1, N, t0, kc, Ct);
    for (int64_t i = 0; i < GKN; ++i) dBt[i] = dCt[i] = T(0);

    for (int64_t d = task.d0; d < task.d1; ++d) {
      // Recompute the chunk: states before each step, exp(dt A), and y.
      const T* ck = a.checkpoints + checkpoint_offset(s, f.coupling, task.b, d, c, task.m0);
      for (int64_t n = 0; n < N; ++n) st[n] = ck[n];
      for (int64_t g = 0; g < G; ++g)
        load_steps(f, task.b, task.m0 + g, d, t0, kc, dt + g * kChunk, dtu + g * kChunk);
      for (int64_t k = 0; k < kc; ++k) {
        T* pk = prev + k * N;
        for (int64_t n = 0; n < N; ++n) {
          pk[n] = st[n];
          next[n] = T(0);
        }
        for (int64_t g = 0; g < G; ++g) {
          const T* Arow = f.A + ((task.m0 + g) * s.channels + d) * N;
          const T* Bk = Bt + (g * kChunk + k) * N;
          const T* Ck = Ct + (g * kChunk + k) * N;
          T* ek = expo + (k * G + g) * N;
          const T dtv = dt[g * kChunk + k], dtuv = dtu[g * kChunk + k];
          T acc = T(0);
#pragma omp simd reduction(+ : acc)
          for (int64_t n = 0; n < N; ++n) {
            const T e = scan_exp(dtv * Arow[n]);
            ek[n] = e;
            const T h = e * (alpha * pk[n]) + dtuv * Bk[n];
            acc += Ck[n] * h;
            next[n] += h;
          }
          y[g * kChunk + k] = acc;
        }
        for (int64_t n = 0; n < N; ++n) st[n] = next[n];
      }
      for (int64_t g = 0; g < G; ++g)
        gate_backward(a, task.b, task.m0 + g, d, t0, kc, y + g * kChunk, dy + g * kChunk);

      // Reverse through the chunk.
      T* cr = carry + (d - task.d0) * N;
      if (c == nch - 1)
        for (int64_t n = 0; n < N; ++n) cr[n] = T(0);
      for (int64_t k = kc - 1; k >= 0; --k) {
        const int64_t t = t0 + k;
        const T* pk = prev + k * N;
        for (int64_t n = 0; n < N; ++n) rho[n] = T(0);
        for (int64_t g = 0; g < G; ++g) {
          const int64_t m = task.m0 + g;
          // d last_state enters lambda at the final step, where the carry is still zero.
          const T* cin = (t == L - 1 && a.dlast_state) ? a.dlast_state + bmd_offset(s, task.b, m, d, N) : cr;
          const T* Arow = f.A + (m * s.channels + d) * N;
          T* dArow = p.dA + bmd_offset(s, task.b, m, d, N);
          const T* Bk = Bt + (g * kChunk + k) * N;
          const T* Ck = Ct + (g * kChunk + k) * N;
          T* dBk = dBt + (g * kChunk + k) * N;
          T* dCk = dCt + (g * kChunk + k) * N;
          const T* ek = expo + (k * G + g) * N;
          const T dtv = dt[g * kChunk + k], dtuv = dtu[g * kChunk + k], dyv = dy[g * kChunk + k];
          T sum_lam_B = T(0), sum_mu_g_A = T(0);
#pragma omp simd reduction(+ : sum_lam_B, sum_mu_g_A)
          for (int64_t n = 0; n < N; ++n) {
            const T lam = dyv * Ck[n] + cin[n];
            const T mu = ek[n] * lam;
            const T gv = alpha * pk[n];
            rho[n] += mu;
            dCk[n] += dyv * (ek[n] * gv + dtuv * Bk[n]);
            dBk[n] += lam * dtuv;
            sum_lam_B += lam * Bk[n];
            const T mg = mu * gv;
            sum_mu_g_A += mg * Arow[n];
            dArow[n] += mg * dtv;
          }
          step_input_grads(a, p, task.b, m, d, t, dtv, dyv, sum_lam_B, sum_mu_g_A);
        }
        for (int64_t n = 0; n < N; ++n) cr[n] = alpha * rho[n];
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
  const int64_t N = s.state, L = s.length, M = s.modalities, MN = M * N, GKN = M * kChunk * N;
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
  T* dt = fresh + 2 * MN;
  T* dtu = dt + M * kChunk;
  T* y = dtu + M * kChunk;
  T* dy = y + M * kChunk;
  T* dW = dy + 3 * M * kChunk;
  for (int64_t i = 0; i < M * M; ++i) dW[i] = T(0);

  auto couple = [&](const T* h, int64_t m, T* gm) {  // gm = sum_i W[m, i] h^i
    for (int64_t n = 0; n < N; ++n) gm[n] = T(0);
    for (int64_t i = 0; i < M; ++i) {
      const T w = f.W[m * M + i];
#pragma omp simd
      for (int64_t n = 0; n < N; ++n) gm[n] += w * h[i * N + n];
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
      for (int64_t i = 0; i < MN; ++i) st[i] = ck[i];
      for (int64_t m = 0; m < M; ++m) load_steps(f, task.b, m, d, t0, kc, dt + m * kChunk, dtu + m * kChunk);
      for (int64_t k = 0; k < kc; ++k) {
        T* pk = prev + k * MN;
        for (int64_t i = 0; i < MN; ++i) pk[i] = st[i];
        for (int64_t m = 0; m < M; ++m) {
          couple(pk, m, coupled);
          const T* Arow = f.A + (m * s.channels + d) * N;
          const T* Bk = Bt + (m * kChunk + k) * N;
          const T* Ck = Ct + (m * kChunk + k) * N;
          T* ek = expo + (k * M + m) * N;
          T* hm = next + m * N;
          const T dtv = dt[m * kChunk + k], dtuv = dtu[m * kChunk + k];
          T acc = T(0);
#pragma omp simd reduction(+ : acc)
          for (int64_t n = 0; n < N; ++n) {
            const T e = scan_exp(dtv * Arow[n]);
            ek[n] = e;
            const T h = e * coupled[n] + dtuv * Bk[n];
            hm[n] = h;
            acc += Ck[n] * h;
          }
          y[m * kChunk + k] = acc;
        }
        for (int64_t i = 0; i < MN; ++i) st[i] = next[i];
      }
      for (int64_t m = 0; m < M; ++m) gate_backward(a, task.b, m, d, t0, kc, y + m * kChunk, dy + m * kChunk);

      T* cr = carry + (d - task.d0) * MN;
      if (c == nch - 1)
        for (int64_t m = 0; m < M; ++m) {
          const T* dl = a.dlast_state ? a.dlast_state + bmd_offset(s, task.b, m, d, N) : nullptr;
          for (int64_t n = 0; n < N; ++n) cr[m * N + n] = dl ? dl[n] : T(0);
        }
      for (int64_t k = kc - 1; k >= 0; --k) {
        const int64_t t = t0 + k;
        const T* pk = prev + k * MN;
        for (int64_t m = 0; m < M; ++m) {
          couple(pk, m, coupled);
          const T* cin = cr + m * N;
          const T* Arow = f.A + (m * s.channels + d) * N;
          T* dArow = p.dA + bmd_offset(s, task.b, m, d, N);
          const T* Bk = Bt + (m * kChunk + k) * N;
          const T* Ck = Ct + (m * kChunk + k) * N;
          T* dBk = dBt + (m * kChunk + k) * N;
          T* dCk = dCt + (m * kChunk + k) * N;
          const T* ek = expo + (k * M + m) * N;
          T* mum = mu + m * N;
          const T dtv = dt[m * kChunk + k], dtuv = dtu[m * kChunk + k], dyv = dy[m * kChunk + k];
          T sum_lam_B = T(0), sum_mu_g_A = T(0);
#pragma omp simd reduction(+ : sum_lam_B, sum_mu_g_A)
          for (int64_t n = 0; n < N; ++n) {
            const T lam = dyv * Ck[n] + cin[n];
            const T muv = ek[n] * lam;
            mum[n] = muv;
            dCk[n] += dyv * (ek[n] * coupled[n] + dtuv * Bk[n]);
            dBk[n] += lam * dtuv;
            sum_lam_B += lam * Bk[n];
            const T mg = muv * coupled[n];
            sum_mu_g_A += mg * Arow[n];
            dArow[n] += mg * dtv;
          }
          step_input_grads(a, p, task.b, m, d, t, dtv, dyv, sum_lam_B, sum_mu_g_A);
        }
        for (int64_t m = 0; m < M; ++m)
          for (int64_t i = 0; i < M; ++i) {
            T acc = T(0);
#pragma omp simd reduction(+ : acc)
            for (int64_t n = 0; n < N; ++n) acc += mu[m * N + n] * pk[i * N + n];
            dW[m * M + i] += acc;
          }
        for (int64_t i = 0; i < M; ++i) {  // carry^i = sum_m W[m, i] mu^m
          T* ci = fresh + i * N;
          for (int64_t n = 0; n < N; ++n) ci[n] = T(0);
          for (int64_t m = 0; m < M; ++m) {
            const T w = f.W[m * M + i];
#pragma omp simd
            for (int64_t n = 0; n < N; ++n) ci[n] += w * mu[m * N + n];
          }
        }
        for (int64_t i = 0; i < MN; ++i) cr[i] = fresh[i];
      }
      if (c == 0 && a.dinitial_state)
        for (int64_t m = 0; m < M; ++m) {
          T* di = a.dinitial_state + bmd_offset(s, task.b, m, d, N);
          for (int64_t n = 0; n < N; ++n) di[n] = cr[m * N + n];
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
