// CPU backward kernels of the coupled selective scan (reverse recurrence of
// docs/coupled-scan.md). Same task split and channel vectors as the forward. For each time chunk,
// taken last to first, and each vector of channels, the chunk's states are recomputed from the
// forward's checkpoint (keeping exp(dt A) and the previous states in task scratch), then the
// reverse recurrence runs through the chunk.
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
  const int64_t N = s.state, Np = padded_state(N), cbp = padded_block<T>(s.channels), w = Simd<T>::width;
  const int64_t S = kind == CouplingKind::kGeneral ? G : 1;  // state rows per channel
  return 4 * G * kChunk * Np       // B, C of the chunk as [g][k][n] and their gradient sums
         + 2 * G * N * cbp         // A as [g][n][d] and its gradient sums
         + 7 * G * kChunk * cbp    // dt, dt u, slope, y, dy, sum_n lambda B, sum_n mu g A as [g][k][d]
         + S * N * cbp             // the reverse carry of every channel of the block
         + kChunk * S * N * w      // one channel vector: the state before every step of the chunk
         + kChunk * G * N * w      //   exp(dt A) of every step
         + 6 * G * N * w           //   state, next, coupled state, mu, new carry, d last_state
         + G * G * w               // dW sums
         + 3 * kChunk * 5;         // one channel's columns
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

// Per-channel work of one chunk for the real channels of channel vector v: the gate (dy, dz)
// from y, then, after the reverse pass, du, d delta, dD and d delta_bias.
template <typename T>
CS_HD void gate_columns(const BackwardArgs<T>& a, const Task& task, int64_t cbp, int64_t v, int64_t t0, int64_t kc,
                        const T* Y, T* DY, T* col) {
  const int64_t w = Simd<T>::width;
  for (int64_t g = 0; g < task.m1 - task.m0; ++g)
    for (int64_t j = v * w; j < (v + 1) * w && task.d0 + j < task.d1; ++j) {
      gather_column(Y + g * kChunk * cbp, cbp, j, kc, col);
      gate_backward(a, task.b, task.m0 + g, task.d0 + j, t0, kc, col, col + kChunk);
      for (int64_t k = 0; k < kc; ++k) DY[(g * kChunk + k) * cbp + j] = col[kChunk + k];
    }
}

template <typename T>
CS_HD void input_grad_columns(const BackwardArgs<T>& a, const BackwardPartials<T>& p, const Task& task, int64_t cbp,
                              int64_t v, int64_t t0, int64_t kc, const T* DT, const T* SLOPE, const T* DY,
                              const T* LB, const T* MGA, T* col) {
  const int64_t w = Simd<T>::width;
  for (int64_t g = 0; g < task.m1 - task.m0; ++g)
    for (int64_t j = v * w; j < (v + 1) * w && task.d0 + j < task.d1; ++j) {
      const int64_t o = g * kChunk * cbp;
      gather_column(DT + o, cbp, j, kc, col);
      gather_column(SLOPE + o, cbp, j, kc, col + kChunk);
      gather_column(DY + o, cbp, j, kc, col + 2 * kChunk);
      gather_column(LB + o, cbp, j, kc, col + 3 * kChunk);
      gather_column(MGA + o, cbp, j, kc, col + 4 * kChunk);
      input_grads(a, p, task.b, task.m0 + g, task.d0 + j, t0, kc, col, col + kChunk, col + 2 * kChunk,
                  col + 3 * kChunk, col + 4 * kChunk);
    }
}

// One reverse step of one modality for one channel vector (docs/coupled-scan.md, Backward):
// lambda = dy C + carry, mu = a lambda (into mu, or added to it when accumulate), g = gscale * prev
// state, and this step's terms of dC, dB (summed over the channels), dA, sum_n lambda B, sum_n mu g A.
template <typename T>
CS_HD void reverse_channel_step(const T* A, int64_t a_stride, T* dA, const T* g, T gscale, const T* B, const T* C,
                                T* dB, T* dC, const T* e, const T* carry, T* mu, bool accumulate,
                                typename Simd<T>::V dtv, typename Simd<T>::V dtuv, typename Simd<T>::V dyv,
                                int64_t N, T* lb, T* mga) {
  typedef typename Simd<T>::V V;
  const int64_t w = Simd<T>::width;
  V pl = V{}, pa = V{};
  for (int64_t n = 0; n < N; ++n) {
    const V ev = load_block<V>(e + n * w);
    const V lam = dyv * C[n] + load_block<V>(carry + n * w);
    const V muv = ev * lam;
    const V gv = gscale * load_block<V>(g + n * w);
    store_block(mu + n * w, accumulate ? load_block<V>(mu + n * w) + muv : muv);
    dC[n] += block_sum<T>(dyv * (ev * gv + dtuv * B[n]));
    dB[n] += block_sum<T>(lam * dtuv);
    pl += lam * B[n];
    const V mg = muv * gv;
    pa += mg * load_block<V>(A + n * a_stride);
    store_block(dA + n * a_stride, load_block<V>(dA + n * a_stride) + mg * dtv);
  }
  store_block(lb, pl);
  store_block(mga, pa);
}

// Lane j of a [n][lane] block of N values into a contiguous row, or back.
template <typename T>
CS_HD void lane_to_row(const T* block, int64_t j, int64_t N, T* row) {
  for (int64_t n = 0; n < N; ++n) row[n] = block[n * Simd<T>::width + j];
}
template <typename T>
CS_HD void row_to_lane(const T* row, int64_t j, int64_t N, T* block) {
  for (int64_t n = 0; n < N; ++n) block[n * Simd<T>::width + j] = row ? row[n] : T(0);
}

// Per-chunk [g][k][d] rows of the backward, carved out of scratch in one place.
template <typename T>
struct StepRows {
  T *DT, *DTU, *SLOPE, *Y, *DY, *LB, *MGA;
  T* end;
};
template <typename T>
CS_HD StepRows<T> step_rows(T* base, int64_t GKD) {
  StepRows<T> r;
  T** slots[] = {&r.DT, &r.DTU, &r.SLOPE, &r.Y, &r.DY, &r.LB, &r.MGA};
  for (T** slot : slots) {
    *slot = base;
    base += GKD;
  }
  r.end = base;
  return r;
}

// Start of a chunk: B, C in [g][k][n], their gradient sums and dy zeroed, dt / dt u / slope rows.
template <typename T>
CS_HD void begin_backward_chunk(const ForwardArgs<T>& f, const Task& task, int64_t cbp, int64_t t0, int64_t kc,
                                T* Bt, T* Ct, T* dBt, T* dCt, const StepRows<T>& r, T* col) {
  const int64_t G = task.m1 - task.m0, GKN = G * kChunk * padded_state(f.size.state), GKD = G * kChunk * cbp;
  load_transposed(f.B, task.b, task.m0, task.m1, f.size.state, t0, kc, Bt);
  load_transposed(f.C, task.b, task.m0, task.m1, f.size.state, t0, kc, Ct);
  for (int64_t i = 0; i < GKN; ++i) dBt[i] = dCt[i] = T(0);
  for (int64_t i = 0; i < GKD; ++i) r.DY[i] = T(0);
  load_block_steps(f, task, cbp, t0, kc, r.DT, r.DTU, col, r.SLOPE);
}

// A sample of length 0 has no step: d initial_state is d last_state (or 0), row by row.
template <typename T>
void pass_through_dlast_state(const BackwardArgs<T>& a, const Task& task) {
  if (!a.dinitial_state) return;
  const Sizes& s = a.fwd.size;
  for (int64_t m = task.m0; m < task.m1; ++m)
    for (int64_t d = task.d0; d < task.d1; ++d) {
      const int64_t at = bmd_offset(s, task.b, m, d, s.state);
      for (int64_t n = 0; n < s.state; ++n) a.dinitial_state[at + n] = a.dlast_state ? a.dlast_state[at + n] : T(0);
    }
}

// Rank-one coupling and "none" (a group of one modality): the carried state is s = sum_m h^m.
// Runs back through the sample's first `steps` time steps.
template <typename T>
void backward_rank_one(const BackwardArgs<T>& a, const BackwardPartials<T>& p, const Task& task, int64_t steps,
                       T alpha, T* scratch) {
  typedef typename Simd<T>::V V;
  const ForwardArgs<T>& f = a.fwd;
  const Sizes& s = f.size;
  const int64_t w = Simd<T>::width, N = s.state, Np = padded_state(N), G = task.m1 - task.m0;
  const int64_t cbp = padded_block<T>(s.channels), nv = (task.d1 - task.d0 + w - 1) / w;
  const int64_t GKN = G * kChunk * Np, GKD = G * kChunk * cbp;
  T* Bt = scratch;
  T* Ct = Bt + GKN;
  T* dBt = Ct + GKN;
  T* dCt = dBt + GKN;
  T* AT = dCt + GKN;               // [g][n][d]
  T* dAT = AT + G * N * cbp;       // [g][n][d]
  const StepRows<T> rows = step_rows(dAT + G * N * cbp, GKD);
  T *DT = rows.DT, *DTU = rows.DTU, *SLOPE = rows.SLOPE, *Y = rows.Y, *DY = rows.DY, *LB = rows.LB, *MGA = rows.MGA;
  T* CARRY = rows.end;             // [v][n][lane]: alpha * rho_{t+1}
  T* P = CARRY + N * cbp;          // [k][n][lane]: s_{t-1}
  T* E = P + kChunk * N * w;       // [k][g][n][lane]
  T* ST = E + kChunk * G * N * w;
  T* NX = ST + G * N * w;
  T* RHO = NX + G * N * w;
  T* DL = RHO + G * N * w;         // [g][n][lane]: d last_state
  T* col = DL + 3 * G * N * w + G * G * w;

  load_block_A(f, task, cbp, AT);
  for (int64_t i = 0; i < G * N * cbp; ++i) dAT[i] = T(0);
  const int64_t nch = num_chunks(steps);
  for (int64_t c = nch - 1; c >= 0; --c) {
    const int64_t t0 = c * kChunk, kc = steps - t0 < kChunk ? steps - t0 : kChunk;
    const bool final_chunk = c == nch - 1;
    begin_backward_chunk(f, task, cbp, t0, kc, Bt, Ct, dBt, dCt, rows, col);

    for (int64_t v = 0; v < nv; ++v) {
      // Recompute the chunk from its checkpoint: states before each step, exp(dt A), and y.
      for (int64_t j = 0; j < w; ++j) {
        const int64_t d = task.d0 + v * w + j;
        row_to_lane(d < task.d1 ? a.checkpoints + checkpoint_offset(s, f.coupling, task.b, d, c, task.m0) : nullptr,
                    j, N, ST);
      }
      for (int64_t k = 0; k < kc; ++k) {
        for (int64_t i = 0; i < N * w; ++i) P[k * N * w + i] = ST[i];
        for (int64_t g = 0; g < G; ++g) {
          const int64_t row = (g * kChunk + k) * cbp + v * w;
          const V y = channel_step(AT + g * N * cbp + v * w, cbp, P + k * N * w, alpha, Bt + (g * kChunk + k) * Np,
                                   Ct + (g * kChunk + k) * Np, load_block<V>(DT + row), load_block<V>(DTU + row), N,
                                   NX, g > 0, static_cast<T*>(nullptr), E + (k * G + g) * N * w);
          store_block(Y + row, y);
        }
        for (int64_t i = 0; i < N * w; ++i) ST[i] = NX[i];
      }
      gate_columns(a, task, cbp, v, t0, kc, Y, DY, col);

      // Reverse through the chunk.
      T* CR = CARRY + v * N * w;
      if (final_chunk) {
        for (int64_t i = 0; i < N * w; ++i) CR[i] = T(0);
        for (int64_t g = 0; g < G && a.dlast_state; ++g)
          for (int64_t j = 0; j < w; ++j) {
            const int64_t d = task.d0 + v * w + j;
            row_to_lane(d < task.d1 ? a.dlast_state + bmd_offset(s, task.b, task.m0 + g, d, N) : nullptr, j, N,
                        DL + g * N * w);
          }
      }
      for (int64_t k = kc - 1; k >= 0; --k) {
        for (int64_t g = 0; g < G; ++g) {
          const int64_t row = (g * kChunk + k) * cbp + v * w;
          // d last_state enters lambda at the final step, where the carry is still zero.
          const T* cin = final_chunk && k == kc - 1 && a.dlast_state ? DL + g * N * w : CR;
          reverse_channel_step(AT + g * N * cbp + v * w, cbp, dAT + g * N * cbp + v * w, P + k * N * w, alpha,
                               Bt + (g * kChunk + k) * Np, Ct + (g * kChunk + k) * Np, dBt + (g * kChunk + k) * Np,
                               dCt + (g * kChunk + k) * Np, E + (k * G + g) * N * w, cin, RHO, g > 0,
                               load_block<V>(DT + row), load_block<V>(DTU + row), load_block<V>(DY + row), N,
                               LB + row, MGA + row);
        }
        for (int64_t i = 0; i < N * w; ++i) CR[i] = alpha * RHO[i];
      }
      input_grad_columns(a, p, task, cbp, v, t0, kc, DT, SLOPE, DY, LB, MGA, col);
      if (c == 0 && a.dinitial_state)  // d h^i_{-1} = sum_m W[m, i] mu^m_0 = alpha rho_0
        for (int64_t j = 0; j < w && task.d0 + v * w + j < task.d1; ++j)
          for (int64_t m = task.m0; m < task.m1; ++m)
            lane_to_row(CR, j, N, a.dinitial_state + bmd_offset(s, task.b, m, task.d0 + v * w + j, N));
    }
    store_chunk_sums(s, p, task, t0, kc, dBt, dCt);
  }
  if (steps == 0) pass_through_dlast_state(a, task);
  for (int64_t g = 0; g < G; ++g)  // dA of the block's channels, rows padded to Np
    for (int64_t d = task.d0; d < task.d1; ++d) {
      T* dst = p.dA + bmd_offset(s, task.b, task.m0 + g, d, Np);
      for (int64_t n = 0; n < N; ++n) dst[n] = dAT[(g * N + n) * cbp + (d - task.d0)];
    }
}

// General coupling: an M-vector of states per (b, d, n); g^m = sum_i W[m, i] h^i, and the carry
// into h^i is sum_m W[m, i] mu^m.
template <typename T>
void backward_general(const BackwardArgs<T>& a, const BackwardPartials<T>& p, const Task& task, int64_t steps,
                      T* scratch) {
  typedef typename Simd<T>::V V;
  const ForwardArgs<T>& f = a.fwd;
  const Sizes& s = f.size;
  const int64_t w = Simd<T>::width, N = s.state, Np = padded_state(N), M = s.modalities;
  const int64_t cbp = padded_block<T>(s.channels), nv = (task.d1 - task.d0 + w - 1) / w;
  const int64_t GKN = M * kChunk * Np, GKD = M * kChunk * cbp, MNW = M * N * w;
  T* Bt = scratch;
  T* Ct = Bt + GKN;
  T* dBt = Ct + GKN;
  T* dCt = dBt + GKN;
  T* AT = dCt + GKN;
  T* dAT = AT + M * N * cbp;
  const StepRows<T> rows = step_rows(dAT + M * N * cbp, GKD);
  T *DT = rows.DT, *DTU = rows.DTU, *SLOPE = rows.SLOPE, *Y = rows.Y, *DY = rows.DY, *LB = rows.LB, *MGA = rows.MGA;
  T* CARRY = rows.end;             // [v][m][n][lane]
  T* P = CARRY + M * N * cbp;      // [k][m][n][lane]: h_{t-1}
  T* E = P + kChunk * MNW;         // [k][m][n][lane]
  T* ST = E + kChunk * MNW;
  T* NX = ST + MNW;
  T* GC = NX + MNW;
  T* MU = GC + MNW;
  T* FR = MU + MNW;
  T* dWv = FR + 2 * MNW;           // [m][i][lane]
  T* col = dWv + M * M * w;
  for (int64_t i = 0; i < M * M * w; ++i) dWv[i] = T(0);

  auto couple = [&](const T* h, T* out, bool transpose) {  // out^m = sum_i W[m, i] h^i (or W[i, m])
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) {
        V acc = V{};
        for (int64_t i = 0; i < M; ++i)
          acc += f.W[transpose ? i * M + m : m * M + i] * load_block<V>(h + (i * N + n) * w);
        store_block(out + (m * N + n) * w, acc);
      }
  };

  load_block_A(f, task, cbp, AT);
  for (int64_t i = 0; i < M * N * cbp; ++i) dAT[i] = T(0);
  const int64_t nch = num_chunks(steps);
  for (int64_t c = nch - 1; c >= 0; --c) {
    const int64_t t0 = c * kChunk, kc = steps - t0 < kChunk ? steps - t0 : kChunk;
    begin_backward_chunk(f, task, cbp, t0, kc, Bt, Ct, dBt, dCt, rows, col);

    for (int64_t v = 0; v < nv; ++v) {
      for (int64_t j = 0; j < w; ++j) {
        const int64_t d = task.d0 + v * w + j;
        for (int64_t m = 0; m < M; ++m)
          row_to_lane(d < task.d1 ? a.checkpoints + checkpoint_offset(s, f.coupling, task.b, d, c, 0) + m * N : nullptr,
                      j, N, ST + m * N * w);
      }
      for (int64_t k = 0; k < kc; ++k) {
        for (int64_t i = 0; i < MNW; ++i) P[k * MNW + i] = ST[i];
        couple(P + k * MNW, GC, false);
        for (int64_t m = 0; m < M; ++m) {
          const int64_t row = (m * kChunk + k) * cbp + v * w;
          const V y = channel_step(AT + m * N * cbp + v * w, cbp, GC + m * N * w, T(1), Bt + (m * kChunk + k) * Np,
                                   Ct + (m * kChunk + k) * Np, load_block<V>(DT + row), load_block<V>(DTU + row), N,
                                   ST + m * N * w, false, static_cast<T*>(nullptr), E + (k * M + m) * N * w);
          store_block(Y + row, y);
        }
      }
      gate_columns(a, task, cbp, v, t0, kc, Y, DY, col);

      T* CR = CARRY + v * MNW;
      if (c == nch - 1)
        for (int64_t j = 0; j < w; ++j) {
          const int64_t d = task.d0 + v * w + j;
          for (int64_t m = 0; m < M; ++m)
            row_to_lane(d < task.d1 && a.dlast_state ? a.dlast_state + bmd_offset(s, task.b, m, d, N) : nullptr, j, N,
                        CR + m * N * w);
        }
      for (int64_t k = kc - 1; k >= 0; --k) {
        const T* pk = P + k * MNW;
        couple(pk, GC, false);
        for (int64_t m = 0; m < M; ++m) {
          const int64_t row = (m * kChunk + k) * cbp + v * w;
          reverse_channel_step(AT + m * N * cbp + v * w, cbp, dAT + m * N * cbp + v * w, GC + m * N * w, T(1),
                               Bt + (m * kChunk + k) * Np, Ct + (m * kChunk + k) * Np, dBt + (m * kChunk + k) * Np,
                               dCt + (m * kChunk + k) * Np, E + (k * M + m) * N * w, CR + m * N * w, MU + m * N * w,
                               false, load_block<V>(DT + row), load_block<V>(DTU + row), load_block<V>(DY + row), N,
                               LB + row, MGA + row);
        }
        for (int64_t m = 0; m < M; ++m)  // dW[m, i] += sum_n mu^m h^i_{t-1}, lane-wise
          for (int64_t i = 0; i < M; ++i) {
            V acc = load_block<V>(dWv + (m * M + i) * w);
            for (int64_t n = 0; n < N; ++n) acc += load_block<V>(MU + (m * N + n) * w) * load_block<V>(pk + (i * N + n) * w);
            store_block(dWv + (m * M + i) * w, acc);
          }
        couple(MU, FR, true);  // carry^i = sum_m W[m, i] mu^m
        for (int64_t i = 0; i < MNW; ++i) CR[i] = FR[i];
      }
      input_grad_columns(a, p, task, cbp, v, t0, kc, DT, SLOPE, DY, LB, MGA, col);
      if (c == 0 && a.dinitial_state)
        for (int64_t j = 0; j < w && task.d0 + v * w + j < task.d1; ++j)
          for (int64_t m = 0; m < M; ++m)
            lane_to_row(CR + m * N * w, j, N, a.dinitial_state + bmd_offset(s, task.b, m, task.d0 + v * w + j, N));
    }
    store_chunk_sums(s, p, task, t0, kc, dBt, dCt);
  }
  if (steps == 0) pass_through_dlast_state(a, task);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t d = task.d0; d < task.d1; ++d) {
      T* dst = p.dA + bmd_offset(s, task.b, m, d, Np);
      for (int64_t n = 0; n < N; ++n) dst[n] = dAT[(m * N + n) * cbp + (d - task.d0)];
    }
  T* slot = p.dW + (task.b * p.blocks + task.block) * M * M;
  for (int64_t i = 0; i < M * M; ++i) slot[i] = block_sum<T>(load_block<V>(dWv + i * w));
}

template <typename T>
void backward_task(const BackwardArgs<T>& a, const BackwardPartials<T>& p, int64_t index, T* scratch) {
  const Sizes& s = a.fwd.size;
  const Task task = decode_task(index, s, a.fwd.coupling);
  const int64_t L = s.length, steps = sample_length(a.fwd.lengths, task.b, L);
  if (steps < L)  // steps past the sample's length are not scanned; their gradients are 0
    for (int64_t m = task.m0; m < task.m1; ++m)
      for (int64_t d = task.d0; d < task.d1; ++d) {
        const int64_t row = bmd_offset(s, task.b, m, d, L);
        for (int64_t t = steps; t < L; ++t) a.du[row + t] = a.ddelta[row + t] = T(0);
        if (a.fwd.z.data)
          for (int64_t t = steps; t < L; ++t) a.dz[row + t] = T(0);
      }
  switch (a.fwd.coupling) {
    case CouplingKind::kRankOne: backward_rank_one(a, p, task, steps, a.fwd.alpha, scratch); break;
    case CouplingKind::kNone: backward_rank_one(a, p, task, steps, T(1), scratch); break;
    case CouplingKind::kGeneral: backward_general(a, p, task, steps, scratch); break;
  }
}

}  // namespace CS_ISA
}  // namespace cpu
}  // namespace coupled_scan
