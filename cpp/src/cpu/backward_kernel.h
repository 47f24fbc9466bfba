// CPU backward kernels of the coupled selective scan (reverse recurrence of
// docs/coupled-scan.md). Same task split and channel vectors as the forward. For each time chunk,
// taken last to first, and each vector of channels, the chunk's states are recomputed from the
// forward's checkpoint (keeping exp(dt A) and the previous states in task scratch), then the
// reverse recurrence runs through the chunk.
//
// The sequence gradients (du, d delta, dz) are written through the *_rows layouts, which
// run_backward always fills in. Gradients summed over axes the task does not own go to per-task slots (dB, dC: per channel
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

// Scratch elements for one backward task. Names used in the kernels: block_pitch = channels of a
// block padded to whole vectors; [g][k][n] and [g][k][d] = (modality of the task, step of the
// chunk, state or channel); [lane] = one channel of the current channel vector.
template <typename T>
int64_t backward_scratch(const Sizes& s, CouplingKind kind) {
  const int64_t G = modality_grouping(kind, s.modalities).width;
  const int64_t N = s.state, Np = padded_state(N), block_pitch = padded_block<T>(s.channels), w = Simd<T>::width;
  const int64_t carried = kind == CouplingKind::kGeneral ? G : 1;  // carried state rows per channel
  return 2 * G * kChunk * Np               // B, C of the chunk as [g][k][n]
         + 2 * G * N * block_pitch         // A as [v][g][n][lane] and its gradient sums
         + 7 * G * kChunk * block_pitch    // dt, dt u, slope, y, dy, sum_n lambda B, sum_n mu g A: [g][k][d]
         + carried * N * block_pitch       // the reverse carry of every channel of the block
         + (kChunk + 1) * carried * N * w  // one channel vector: the state before every step of the chunk,
         + kChunk * G * N * w              //   exp(dt A) of every step,
         + 3 * G * N * w                   //   coupled state, mu (or rho), d last_state
         + G * G * w                       // dW sums per lane
         + 5 * w * kChunk;                 // the columns of one channel vector
}

// Per-step values of one chunk for every channel of the block, each as [g][k][d] rows; carved
// out of scratch in one place (step_rows).
template <typename T>
struct StepRows {
  T* dt;        // dt
  T* dtu;       // dt * u
  T* slope;     // d dt / d delta
  T* y;         // sum_n C h
  T* dy;        // d y (after the gate)
  T* lambda_B;  // sum_n lambda B
  T* mu_g_A;    // sum_n mu g A
  T* end;       // first element after the rows
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
  T* dz = a.dz_rows.row(b, m, d) + t0;
#pragma omp simd
  for (int64_t k = 0; k < kc; ++k) {
    const T sg = scan_sigmoid(z[k]);
    dy[k] = dout[k] * z[k] * sg;
    dz[k] = dout[k] * (y[k] + skip * u[k]) * (sg * (T(1) + z[k] * (T(1) - sg)));
  }
}

// Gradients that depend on sums over n only, for steps t0 .. t0+kc of one (b, m, d): du, d delta,
// and this row's share of dD and d delta_bias. lambda_B = sum_n lambda B, mu_g_A = sum_n mu g A.
template <typename T>
CS_HD void input_grads(const BackwardArgs<T>& a, const BackwardPartials<T>& p, int64_t b, int64_t m,
                       int64_t d, int64_t t0, int64_t kc, const T* dt, const T* slope, const T* dy,
                       const T* lambda_B, const T* mu_g_A) {
  const ForwardArgs<T>& f = a.fwd;
  const Sizes& s = f.size;
  const T* u = f.u.row(b, m, d) + t0;
  const T skip = f.D ? f.D[m * s.channels + d] : T(0);
  T* du = a.du_rows.row(b, m, d) + t0;
  T* ddelta = a.ddelta_rows.row(b, m, d) + t0;
  T sum_dD = T(0), sum_bias = T(0);
#pragma omp simd reduction(+ : sum_dD, sum_bias)
  for (int64_t k = 0; k < kc; ++k) {
    du[k] = dt[k] * lambda_B[k] + dy[k] * skip;
    const T g = (u[k] * lambda_B[k] + mu_g_A[k]) * slope[k];
    ddelta[k] = g;
    sum_dD += dy[k] * u[k];
    sum_bias += g;
  }
  const int64_t pm = (b * s.modalities + m) * s.channels + d;
  p.dD[pm] += sum_dD;
  p.dbias[pm] += sum_bias;
}

// The chunk's rows of this block's dB (or dC) partial sums, [g][k][n] with modalities L * Np apart:
// the reverse steps add their channel sums straight into them (BackwardPartials: (samples, blocks,
// M, L, Np)), and the reduction over the blocks transposes them once, at the end.
template <typename T>
CS_HD T* chunk_sums(T* partial, const Sizes& s, const BackwardPartials<T>& p, const Task& task, int64_t t0) {
  return partial + ((((task.b - p.first_sample) * p.blocks + task.block) * s.modalities + task.m0) * s.length + t0) *
                       padded_state(s.state);
}

// Per-channel work of one chunk for the real channels of channel vector v: the gate (dy, dz)
// from y, then, after the reverse pass, du, d delta, dD and d delta_bias. The [k][d] rows of the
// vector's channels are transposed into columns [j][k] (columns: scratch of 5 w kChunk), and back.
// gate_backward for step-major tensors: the channels v * width .. of the block, a step at a time,
// straight between the [g][k][d] rows and the tensors.
template <typename T>
CS_HD void gate_steps(const BackwardArgs<T>& a, const Task& task, int64_t block_pitch, int64_t v, int64_t t0,
                      int64_t kc, const T* y_rows, T* dy_rows) {
  const ForwardArgs<T>& f = a.fwd;
  const int64_t w = Simd<T>::width, d0 = task.d0 + v * w;
  const int64_t real = task.d1 - d0 < w ? task.d1 - d0 : w;
  const StepPrefetch prefetch{task, t0, kc, d0, d0 + real};
  prefetch.first(a.dout, false);
  prefetch.first(f.z, false);
  prefetch.first(f.u, false);
  prefetch.first(a.dz_rows, true);
  for (int64_t m = task.m0; m < task.m1; ++m) {
    const T* skip = f.D ? f.D + m * f.size.channels + d0 : nullptr;
    for (int64_t k = 0; k < kc; ++k) {
      prefetch.ahead(a.dout, m - task.m0, k, false);
      prefetch.ahead(f.z, m - task.m0, k, false);
      prefetch.ahead(f.u, m - task.m0, k, false);
      prefetch.ahead(a.dz_rows, m - task.m0, k, true);
      const int64_t o = ((m - task.m0) * kChunk + k) * block_pitch + v * w;
      const T* y = y_rows + o;
      T* dy = dy_rows + o;
      const T* dout = a.dout.at(task.b, m, d0, t0 + k);
      if (f.z.data) {
        const T* z = f.z.at(task.b, m, d0, t0 + k);
        const T* u = f.u.at(task.b, m, d0, t0 + k);
        T* dz = a.dz_rows.at(task.b, m, d0, t0 + k);
#pragma omp simd
        for (int64_t j = 0; j < real; ++j) {
          const T sg = scan_sigmoid(z[j]);
          dy[j] = dout[j] * z[j] * sg;
          dz[j] = dout[j] * (y[j] + (skip ? skip[j] : T(0)) * u[j]) * (sg * (T(1) + z[j] * (T(1) - sg)));
        }
      } else {
        for (int64_t j = 0; j < real; ++j) dy[j] = dout[j];
      }
      for (int64_t j = real; j < w; ++j) dy[j] = T(0);  // padding channels
    }
  }
}

template <typename T>
CS_HD void gate_columns(const BackwardArgs<T>& a, const Task& task, int64_t block_pitch, int64_t v, int64_t t0,
                        int64_t kc, const T* y_rows, T* dy_rows, T* columns) {
  if (a.fwd.u.step_major()) return gate_steps(a, task, block_pitch, v, t0, kc, y_rows, dy_rows);
  const int64_t w = Simd<T>::width;
  T* y_cols = columns;
  T* dy_cols = columns + w * kChunk;
  for (int64_t g = 0; g < task.m1 - task.m0; ++g) {
    const int64_t o = g * kChunk * block_pitch + v * w;
    transpose_rows(y_rows + o, block_pitch, kc, w, y_cols, kChunk);
    for (int64_t j = 0; j < w; ++j) {
      const int64_t d = task.d0 + v * w + j;
      if (d < task.d1)
        gate_backward(a, task.b, task.m0 + g, d, t0, kc, y_cols + j * kChunk, dy_cols + j * kChunk);
      else  // padding channels: dy = 0
        for (int64_t k = 0; k < kc; ++k) dy_cols[j * kChunk + k] = T(0);
    }
    transpose_rows(dy_cols, kChunk, w, kc, dy_rows + o, block_pitch);
  }
}

// input_grads for step-major tensors: the channels v * width .. of the block, a step at a time;
// each channel's dD and d delta_bias terms are summed over the chunk's steps in step order.
template <typename T>
CS_HD void input_grad_steps(const BackwardArgs<T>& a, const BackwardPartials<T>& p, const Task& task,
                            int64_t block_pitch, int64_t v, int64_t t0, int64_t kc, const StepRows<T>& rows) {
  const ForwardArgs<T>& f = a.fwd;
  const Sizes& s = f.size;
  const int64_t w = Simd<T>::width, d0 = task.d0 + v * w;
  const int64_t real = task.d1 - d0 < w ? task.d1 - d0 : w;
  const StepPrefetch prefetch{task, t0, kc, d0, d0 + real};
  prefetch.first(f.u, false);
  prefetch.first(a.du_rows, true);
  prefetch.first(a.ddelta_rows, true);
  for (int64_t m = task.m0; m < task.m1; ++m) {
    const T* skip = f.D ? f.D + m * s.channels + d0 : nullptr;
    alignas(64) T sum_dD[Simd<T>::width] = {}, sum_bias[Simd<T>::width] = {};
    for (int64_t k = 0; k < kc; ++k) {
      prefetch.ahead(f.u, m - task.m0, k, false);
      prefetch.ahead(a.du_rows, m - task.m0, k, true);
      prefetch.ahead(a.ddelta_rows, m - task.m0, k, true);
      const int64_t o = ((m - task.m0) * kChunk + k) * block_pitch + v * w;
      const T *dt = rows.dt + o, *slope = rows.slope + o, *dy = rows.dy + o;
      const T *lambda_B = rows.lambda_B + o, *mu_g_A = rows.mu_g_A + o;
      const T* u = f.u.at(task.b, m, d0, t0 + k);
      T* du = a.du_rows.at(task.b, m, d0, t0 + k);
      T* ddelta = a.ddelta_rows.at(task.b, m, d0, t0 + k);
#pragma omp simd
      for (int64_t j = 0; j < real; ++j) {
        du[j] = dt[j] * lambda_B[j] + dy[j] * (skip ? skip[j] : T(0));
        const T g = (u[j] * lambda_B[j] + mu_g_A[j]) * slope[j];
        ddelta[j] = g;
        sum_dD[j] += dy[j] * u[j];
        sum_bias[j] += g;
      }
    }
    const int64_t pm = (task.b * s.modalities + m) * s.channels + d0;
    for (int64_t j = 0; j < real; ++j) {
      p.dD[pm + j] += sum_dD[j];
      p.dbias[pm + j] += sum_bias[j];
    }
  }
}

template <typename T>
CS_HD void input_grad_columns(const BackwardArgs<T>& a, const BackwardPartials<T>& p, const Task& task,
                              int64_t block_pitch, int64_t v, int64_t t0, int64_t kc, const StepRows<T>& rows,
                              T* columns) {
  if (a.fwd.u.step_major()) return input_grad_steps(a, p, task, block_pitch, v, t0, kc, rows);
  const int64_t w = Simd<T>::width;
  const T* sources[5] = {rows.dt, rows.slope, rows.dy, rows.lambda_B, rows.mu_g_A};
  auto column = [&](int64_t i, int64_t j) { return columns + (i * w + j) * kChunk; };
  for (int64_t g = 0; g < task.m1 - task.m0; ++g) {
    const int64_t o = g * kChunk * block_pitch + v * w;
    for (int64_t i = 0; i < 5; ++i) transpose_rows(sources[i] + o, block_pitch, kc, w, column(i, 0), kChunk);
    for (int64_t j = 0; j < w && task.d0 + v * w + j < task.d1; ++j)
      input_grads(a, p, task.b, task.m0 + g, task.d0 + v * w + j, t0, kc, column(0, j), column(1, j), column(2, j),
                  column(3, j), column(4, j));
  }
}

// One reverse step of one modality for one channel vector (docs/coupled-scan.md, Backward):
// lambda = dy C + carry, mu = a lambda (into mu, or added to it when accumulate), g = gscale * prev
// state, and this step's terms of dC, dB (summed over the channels), dA, sum_n lambda B, sum_n mu g A
// (A as the kernels keep it, scaled by DecayBase<T>::scale; the sum is scaled back).
// The channel sums of dC and dB are taken `width` states at a time (lane_sums_depth_first).
// Rank-one groups pass, for their last modality, carry_out: the next carry gscale * (mu sum)
// goes there instead of into mu (carry_out may be carry: each state reads its carry first).
// h, when given, is this step's state a g + dt u B (a group of one keeps it from the recompute).
template <typename T>
CS_HD void reverse_channel_step(const T* A, T* dA, const T* g, T gscale, const T* B, const T* C,
                                T* dB, T* dC, const T* decay, const T* carry, T* mu, bool accumulate,
                                typename Simd<T>::V dtv, typename Simd<T>::V dtuv, typename Simd<T>::V dyv,
                                int64_t N, T* lambda_B, T* mu_g_A, T* carry_out = nullptr, const T* h = nullptr) {
  typedef typename Simd<T>::V V;
  constexpr int64_t w = Simd<T>::width;
  V sum_lambda_B = V{}, sum_mu_g_A = V{};
  // State n's terms; returns its dC and dB terms before the sum over the channels.
  auto state_terms = [&](int64_t n, V& dC_term, V& dB_term) __attribute__((always_inline)) {
    const V decay_v = load_block<V>(decay + n * w);
    const V lambda_v = dyv * C[n] + load_block<V>(carry + n * w);
    const V mu_v = decay_v * lambda_v;
    const V g_v = gscale * load_block<V>(g + n * w);
    const V mu_total = accumulate ? load_block<V>(mu + n * w) + mu_v : mu_v;
    if (carry_out)
      store_block(carry_out + n * w, gscale * mu_total);
    else
      store_block(mu + n * w, mu_total);
    dC_term = dyv * (h ? load_block<V>(h + n * w) : decay_v * g_v + dtuv * B[n]);
    dB_term = lambda_v * dtuv;
    sum_lambda_B += lambda_v * B[n];
    const V mu_g = mu_v * g_v;
    sum_mu_g_A += mu_g * load_block<V>(A + n * w);
    store_block(dA + n * w, load_block<V>(dA + n * w) + mu_g * dtv);
  };
  int64_t n0 = 0;
  for (; n0 + w <= N; n0 += w) {
    const VecPair<V> sums = lane_sums_depth_first<T>([&](int j) __attribute__((always_inline)) {
      VecPair<V> terms;
      state_terms(n0 + j, terms.x, terms.y);
      return terms;
    });
    store_block(dC + n0, load_block<V>(dC + n0) + sums.x);
    store_block(dB + n0, load_block<V>(dB + n0) + sums.y);
  }
  for (int64_t n = n0; n < N; ++n) {
    V dC_term, dB_term;
    state_terms(n, dC_term, dB_term);
    dC[n] += block_sum<T>(dC_term);
    dB[n] += block_sum<T>(dB_term);
  }
  store_block(lambda_B, sum_lambda_B);
  store_block(mu_g_A, sum_mu_g_A * DecayBase<T>::inverse);  // A is scaled (block_decay)
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

template <typename T>
CS_HD StepRows<T> step_rows(T* base, int64_t chunk_row_elems) {
  StepRows<T> r;
  T** slots[] = {&r.dt, &r.dtu, &r.slope, &r.y, &r.dy, &r.lambda_B, &r.mu_g_A};
  for (T** slot : slots) {
    *slot = base;
    base += chunk_row_elems;
  }
  r.end = base;
  return r;
}

// Start of a chunk: B, C in [g][k][n], the chunk's rows of the dB, dC sums (chunk_sums) and dy
// zeroed, dt / dt u / slope rows.
template <typename T>
CS_HD void begin_backward_chunk(const ForwardArgs<T>& f, const Task& task, int64_t block_pitch, int64_t t0,
                                int64_t kc, T* B_chunk, T* C_chunk, T* dB_chunk, T* dC_chunk, const StepRows<T>& r,
                                T* columns) {
  const int64_t G = task.m1 - task.m0, Np = padded_state(f.size.state), L = f.size.length;
  const int64_t chunk_row_elems = G * kChunk * block_pitch;
  load_transposed(f.B, task.b, task.m0, task.m1, f.size.state, t0, kc, B_chunk);
  load_transposed(f.C, task.b, task.m0, task.m1, f.size.state, t0, kc, C_chunk);
  for (int64_t g = 0; g < G; ++g)
    for (int64_t i = 0; i < kc * Np; ++i) dB_chunk[g * L * Np + i] = dC_chunk[g * L * Np + i] = T(0);
  for (int64_t i = 0; i < chunk_row_elems; ++i) r.dy[i] = T(0);
  load_block_steps(f, task, block_pitch, t0, kc, r.dt, r.dtu, columns, r.slope);
}

// The task's dA sums, [v][g][n][lane], into its rows (b, m, d) of the per-sample dA
// partials (padded to Np), by tile transposes.
template <typename T>
CS_HD void store_dA_block(const Sizes& s, const BackwardPartials<T>& p, const Task& task, const T* dA_block) {
  const int64_t N = s.state, Np = padded_state(N), G = task.m1 - task.m0, w = Simd<T>::width;
  for (int64_t v = 0; task.d0 + v * w < task.d1; ++v)
    for (int64_t m = task.m0; m < task.m1; ++m) {
      const int64_t d = task.d0 + v * w, count = task.d1 - d < w ? task.d1 - d : w;
      transpose_rows(dA_block + vector_A_offset<T>(v, G, N) + (m - task.m0) * N * w, w, N, count,
                     p.dA + bmd_offset(s, task.b, m, d, Np), Np);
    }
}

// The rows a backward chunk reads (B, C, delta, u, z, dout) and writes (du, d delta, dz);
// step-major ones but B and C are asked for by the loops that use them (StepPrefetch).
template <typename T>
CS_HD void prefetch_backward_rows(const BackwardArgs<T>& a, const Task& task, int64_t t0, int64_t kc) {
  prefetch_rows(a.fwd.B, task, t0, kc, false, 0, a.fwd.size.state);
  prefetch_rows(a.fwd.C, task, t0, kc, false, 0, a.fwd.size.state);
  if (a.fwd.u.step_major()) return;
  prefetch_rows(a.fwd.delta, task, t0, kc, false);
  prefetch_rows(a.fwd.u, task, t0, kc, false);
  prefetch_rows(a.fwd.z, task, t0, kc, false);
  prefetch_rows(a.dout, task, t0, kc, false);
  prefetch_rows(a.du_rows, task, t0, kc, true);
  prefetch_rows(a.ddelta_rows, task, t0, kc, true);
  prefetch_rows(a.dz_rows, task, t0, kc, true);
}

// A sample of length 0 has no step: d initial_state is d last_state (or 0), row by row.
template <typename T>
void pass_through_dlast_state(const BackwardArgs<T>& a, const Task& task) {
  if (!a.dinitial_state) return;
  const Sizes& s = a.fwd.size;
  for (int64_t m = task.m0; m < task.m1; ++m)
    for (int64_t d = task.d0; d < task.d1; ++d) {
      const int64_t at = bmd_offset(s, task.b, m, d, s.state);
      for (int64_t n = 0; n < s.state; ++n)
        a.dinitial_state[at + n] = a.dlast_state ? a.dlast_state[at + n] : T(0);
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
  const int64_t block_pitch = padded_block<T>(s.channels), vectors = (task.d1 - task.d0 + w - 1) / w;
  const int64_t chunk_bc_elems = G * kChunk * Np, chunk_row_elems = G * kChunk * block_pitch;
  T* B_chunk = scratch;                         // [g][k][n]
  T* C_chunk = B_chunk + chunk_bc_elems;        // [g][k][n]
  T* A_block = C_chunk + chunk_bc_elems;        // [v][g][n][lane]
  T* dA_block = A_block + G * N * block_pitch;  // [v][g][n][lane]
  const StepRows<T> rows = step_rows(dA_block + G * N * block_pitch, chunk_row_elems);
  T* block_carry = rows.end;                    // [v][n][lane]: alpha * rho_{t+1} of every channel vector
  T* prev_states = block_carry + N * block_pitch;  // [k][n][lane]: s_{t-1} of each step (and the last s)
  T* decays = prev_states + (kChunk + 1) * N * w;  // [k][g][n][lane]: exp(dt A)
  T* mu_sum = decays + kChunk * G * N * w;      // [n][lane]: sum of mu^g over a step's modalities but the last
  T* dlast_lanes = mu_sum + G * N * w;          // [g][n][lane]: d last_state
  T* columns = dlast_lanes + G * N * w;         // one channel's [k] columns

  const bool nonpositive = load_block_A(f, task, block_pitch, A_block);
  for (int64_t i = 0; i < G * N * block_pitch; ++i) dA_block[i] = T(0);
  const int64_t chunks = num_chunks(f.coupling, steps);
  for (int64_t c = chunks - 1; c >= 0; --c) {
    const auto [t0, kc] = chunk_span(f.coupling, c, steps);
    const bool final_chunk = c == chunks - 1;
    T* dB_chunk = chunk_sums(p.dB, s, p, task, t0);  // [g][k][n], modalities L * Np apart
    T* dC_chunk = chunk_sums(p.dC, s, p, task, t0);
    prefetch_backward_rows(a, task, t0, kc);
    begin_backward_chunk(f, task, block_pitch, t0, kc, B_chunk, C_chunk, dB_chunk, dC_chunk, rows, columns);

    for (int64_t v = 0; v < vectors; ++v) {
      // Recompute the chunk from its checkpoint: states before each step, exp(dt A), and y.
      for (int64_t j = 0; j < w; ++j) {
        const int64_t d = task.d0 + v * w + j;
        row_to_lane(d < task.d1 ? a.checkpoints + checkpoint_offset(s, f.coupling, task.b, d, c, task.m0) : nullptr,
                    j, N, prev_states);
      }
      for (int64_t k = 0; k < kc; ++k) {
        V dtv[kMaxModalities], dtuv[kMaxModalities], y[kMaxModalities];
        load_step_vectors(rows.dt, G, k, block_pitch, v, dtv);
        load_step_vectors(rows.dtu, G, k, block_pitch, v, dtuv);
        rank_one_step(A_block + vector_A_offset<T>(v, G, N), prev_states + k * N * w, alpha, B_chunk + k * Np,
                      C_chunk + k * Np, kChunk * Np, dtv, dtuv, G, N, nonpositive, prev_states + (k + 1) * N * w, y,
                      static_cast<T*>(nullptr), decays + k * G * N * w);
        store_step_vectors(y, G, k, block_pitch, v, rows.y);
      }
      gate_columns(a, task, block_pitch, v, t0, kc, rows.y, rows.dy, columns);

      // Reverse through the chunk.
      T* carry = block_carry + v * N * w;
      if (final_chunk) {
        for (int64_t i = 0; i < N * w; ++i) carry[i] = T(0);
        for (int64_t g = 0; g < G && a.dlast_state; ++g)
          for (int64_t j = 0; j < w; ++j) {
            const int64_t d = task.d0 + v * w + j;
            row_to_lane(d < task.d1 ? a.dlast_state + bmd_offset(s, task.b, task.m0 + g, d, N) : nullptr, j, N,
                        dlast_lanes + g * N * w);
          }
      }
      for (int64_t k = kc - 1; k >= 0; --k) {
        for (int64_t g = 0; g < G; ++g) {
          const int64_t row = (g * kChunk + k) * block_pitch + v * w, bc = (g * kChunk + k) * Np;
          const int64_t sums = (g * s.length + k) * Np, a_at = vector_A_offset<T>(v, G, N) + g * N * w;
          // d last_state enters lambda at the final step, where the carry is still zero.
          const T* carry_in = final_chunk && k == kc - 1 && a.dlast_state ? dlast_lanes + g * N * w : carry;
          // The last modality writes the next carry, alpha rho; with one modality, h_t = s_t.
          reverse_channel_step(A_block + a_at, dA_block + a_at, prev_states + k * N * w, alpha,
                               B_chunk + bc, C_chunk + bc, dB_chunk + sums, dC_chunk + sums, decays + (k * G + g) * N * w,
                               carry_in, mu_sum, g > 0, load_block<V>(rows.dt + row), load_block<V>(rows.dtu + row),
                               load_block<V>(rows.dy + row), N, rows.lambda_B + row, rows.mu_g_A + row,
                               g == G - 1 ? carry : nullptr, G == 1 ? prev_states + (k + 1) * N * w : nullptr);
        }
      }
      input_grad_columns(a, p, task, block_pitch, v, t0, kc, rows, columns);
      if (c == 0 && a.dinitial_state)  // d h^i_{-1} = sum_m W[m, i] mu^m_0 = alpha rho_0
        for (int64_t j = 0; j < w && task.d0 + v * w + j < task.d1; ++j)
          for (int64_t m = task.m0; m < task.m1; ++m)
            lane_to_row(carry, j, N, a.dinitial_state + bmd_offset(s, task.b, m, task.d0 + v * w + j, N));
    }
  }
  if (steps == 0) pass_through_dlast_state(a, task);
  store_dA_block(s, p, task, dA_block);
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
  const int64_t block_pitch = padded_block<T>(s.channels), vectors = (task.d1 - task.d0 + w - 1) / w;
  const int64_t chunk_bc_elems = M * kChunk * Np, chunk_row_elems = M * kChunk * block_pitch;
  const int64_t vector_states = M * N * w;       // the M-vector of states of one channel vector
  T* B_chunk = scratch;                          // [m][k][n]
  T* C_chunk = B_chunk + chunk_bc_elems;         // [m][k][n]
  T* A_block = C_chunk + chunk_bc_elems;         // [v][m][n][lane]
  T* dA_block = A_block + M * N * block_pitch;   // [v][m][n][lane]
  const StepRows<T> rows = step_rows(dA_block + M * N * block_pitch, chunk_row_elems);
  T* block_carry = rows.end;                     // [v][m][n][lane]: the carry of every channel vector
  T* prev_states = block_carry + M * N * block_pitch;  // [k][m][n][lane]: h_{t-1} of each step (and the last h)
  T* decays = prev_states + (kChunk + 1) * vector_states;  // [k][m][n][lane]: exp(dt A)
  T* coupled = decays + kChunk * vector_states;  // [m][n][lane]: g = W h_{t-1}
  T* mu = coupled + vector_states;               // [m][n][lane]
  T* dW_lanes = mu + vector_states;              // [m][i][lane]
  T* columns = dW_lanes + M * M * w;             // one channel's [k] columns
  for (int64_t i = 0; i < M * M * w; ++i) dW_lanes[i] = T(0);

  const bool nonpositive = load_block_A(f, task, block_pitch, A_block);
  for (int64_t i = 0; i < M * N * block_pitch; ++i) dA_block[i] = T(0);
  const int64_t chunks = num_chunks(f.coupling, steps);
  for (int64_t c = chunks - 1; c >= 0; --c) {
    const auto [t0, kc] = chunk_span(f.coupling, c, steps);
    T* dB_chunk = chunk_sums(p.dB, s, p, task, t0);  // [g][k][n], modalities L * Np apart
    T* dC_chunk = chunk_sums(p.dC, s, p, task, t0);
    prefetch_backward_rows(a, task, t0, kc);
    begin_backward_chunk(f, task, block_pitch, t0, kc, B_chunk, C_chunk, dB_chunk, dC_chunk, rows, columns);

    for (int64_t v = 0; v < vectors; ++v) {
      for (int64_t j = 0; j < w; ++j) {
        const int64_t d = task.d0 + v * w + j;
        for (int64_t m = 0; m < M; ++m)
          row_to_lane(d < task.d1 ? a.checkpoints + checkpoint_offset(s, f.coupling, task.b, d, c, 0) + m * N
                                  : nullptr,
                      j, N, prev_states + m * N * w);
      }
      for (int64_t k = 0; k < kc; ++k) {
        V dtv[kMaxModalities], dtuv[kMaxModalities], y[kMaxModalities];
        load_step_vectors(rows.dt, M, k, block_pitch, v, dtv);
        load_step_vectors(rows.dtu, M, k, block_pitch, v, dtuv);
        step_decays(A_block + vector_A_offset<T>(v, M, N), dtv, M, N, nonpositive, decays + k * vector_states);
        general_step(f.W, M, decays + k * vector_states, prev_states + k * vector_states, B_chunk + k * Np,
                     C_chunk + k * Np, kChunk * Np, dtuv, N, prev_states + (k + 1) * vector_states, y);
        store_step_vectors(y, M, k, block_pitch, v, rows.y);
      }
      gate_columns(a, task, block_pitch, v, t0, kc, rows.y, rows.dy, columns);

      T* carry = block_carry + v * vector_states;
      if (c == chunks - 1)
        for (int64_t j = 0; j < w; ++j) {
          const int64_t d = task.d0 + v * w + j;
          for (int64_t m = 0; m < M; ++m)
            row_to_lane(d < task.d1 && a.dlast_state ? a.dlast_state + bmd_offset(s, task.b, m, d, N) : nullptr, j, N,
                        carry + m * N * w);
        }
      for (int64_t k = kc - 1; k >= 0; --k) {
        const T* prev = prev_states + k * vector_states;
        couple_states(f.W, M, N, prev, coupled);
        for (int64_t m = 0; m < M; ++m) {
          const int64_t row = (m * kChunk + k) * block_pitch + v * w, bc = (m * kChunk + k) * Np;
          const int64_t sums = (m * s.length + k) * Np, a_at = vector_A_offset<T>(v, M, N) + m * N * w;
          reverse_channel_step(A_block + a_at, dA_block + a_at, coupled + m * N * w, T(1), B_chunk + bc,
                               C_chunk + bc, dB_chunk + sums, dC_chunk + sums, decays + (k * M + m) * N * w,
                               carry + m * N * w, mu + m * N * w, false, load_block<V>(rows.dt + row),
                               load_block<V>(rows.dtu + row), load_block<V>(rows.dy + row), N, rows.lambda_B + row,
                               rows.mu_g_A + row, static_cast<T*>(nullptr), prev + vector_states + m * N * w);  // h_t
        }
        // dW[m, i] += sum_n mu^m h^i_{t-1}; carry^i = sum_m W[m, i] mu^m
        coupling_adjoint(f.W, mu, prev, M, N, dW_lanes, carry);
      }
      input_grad_columns(a, p, task, block_pitch, v, t0, kc, rows, columns);
      if (c == 0 && a.dinitial_state)
        for (int64_t j = 0; j < w && task.d0 + v * w + j < task.d1; ++j)
          for (int64_t m = 0; m < M; ++m)
            lane_to_row(carry + m * N * w, j, N, a.dinitial_state + bmd_offset(s, task.b, m, task.d0 + v * w + j, N));
    }
  }
  if (steps == 0) pass_through_dlast_state(a, task);
  store_dA_block(s, p, task, dA_block);
  T* slot = p.dW + (task.b * p.blocks + task.block) * M * M;
  for (int64_t i = 0; i < M * M; ++i) slot[i] = block_sum<T>(load_block<V>(dW_lanes + i * w));
}

template <typename T>
void backward_task(const BackwardArgs<T>& a, const BackwardPartials<T>& p, int64_t index, T* scratch) {
  const Sizes& s = a.fwd.size;
  const Task task = decode_task(index, s, a.fwd.coupling);
  const int64_t L = s.length, steps = sample_length(a.fwd.lengths, task.b, L);
  if (steps < L)  // steps past the sample's length are not scanned; their gradients are 0
    for (int64_t m = task.m0; m < task.m1; ++m)
      for (int64_t d = task.d0; d < task.d1; ++d)
        for (int64_t t = steps; t < L; ++t) {
          *a.du_rows.at(task.b, m, d, t) = *a.ddelta_rows.at(task.b, m, d, t) = T(0);
          if (a.fwd.z.data) *a.dz_rows.at(task.b, m, d, t) = T(0);
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
