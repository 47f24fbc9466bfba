// CPU forward kernels of the coupled selective scan, one task = (batch b, channel block,
// modality group). Compiled once per instruction set: the including file defines CS_ISA, the
// namespace that keeps each compilation's templates apart.
//
// Vectorised across channels: a SIMD vector holds one state value n of `width` neighbouring
// channels d, so exp(dt A), the state update and y = sum_n C h are all lane-wise (B and C do not
// depend on d and are broadcast) and no horizontal sums are needed. Loop order per task: time
// chunks (B, C of the chunk transposed once for the block; dt for all its channels), time steps,
// channel vectors; then, per step and channel vector, one pass computing exp(dt A) for every
// (modality, n) and one pass updating the states (simd_block.h: step_decays, rank_one_update_of,
// general_step). States live in task scratch; only checkpoints leave it.
// `out` is written through a.out_rows, which run_forward always fills in.
#pragma once

#include "chunk_inputs.h"
#include "simd_block.h"

#ifndef CS_ISA
#error "define CS_ISA (the instruction-set namespace) before including forward_kernel.h"
#endif

namespace coupled_scan {
namespace cpu {
namespace CS_ISA {

// Scratch elements for one forward task.
template <typename T>
int64_t forward_scratch(const Sizes& s, CouplingKind kind) {
  const int64_t G = modality_grouping(kind, s.modalities).width;
  const int64_t N = s.state, Np = padded_state(N), block_pitch = padded_block<T>(s.channels);
  const int64_t w = Simd<T>::width;
  const int64_t states = kind == CouplingKind::kGeneral ? G * N * block_pitch : N * block_pitch;
  return 2 * G * kChunk * Np             // B and C of the chunk as [g][k][n] (contiguous per step)
         + G * N * block_pitch           // A as [v][g][n][lane]
         + states                        // the state of every channel of the block
         + 2 * G * N * w                 // one channel vector's decays (rank one: and its final h)
         + 3 * G * kChunk * block_pitch  // dt, dt * u and y as [g][k][d]
         + 3 * w * kChunk;               // the [j][k] columns of one channel vector
}

// Write out = (y + D u) * silu(z) for steps t0 .. t0+kc of one (b, m, d); y = sum_n C h.
template <typename T>
CS_HD void store_outputs(const ForwardArgs<T>& a, int64_t b, int64_t m, int64_t d, int64_t t0, int64_t kc,
                         const T* y) {
  const Sizes& s = a.size;
  const T* u = a.u.row(b, m, d) + t0;
  const T skip = a.D ? a.D[m * s.channels + d] : T(0);
  T* o = a.out_rows.row(b, m, d) + t0;
  if (a.z.data) {
    const T* z = a.z.row(b, m, d) + t0;
#pragma omp simd
    for (int64_t k = 0; k < kc; ++k) o[k] = (y[k] + skip * u[k]) * (z[k] * scan_sigmoid(z[k]));
  } else {
#pragma omp simd
    for (int64_t k = 0; k < kc; ++k) o[k] = y[k] + skip * u[k];
  }
}

// Outputs of the chunk for every real channel of the block, from y stored as [g][k][d]: a channel
// vector at a time, transposed into [j][k] columns (scratch of width * kChunk).
template <typename T>
CS_HD void store_block_outputs(const ForwardArgs<T>& a, const Task& task, int64_t block_pitch, int64_t t0, int64_t kc,
                               const T* y_rows, T* columns) {
  if (a.u.step_major()) {  // step-major: straight from the rows, a step of the block at a time
    const int64_t real = task.d1 - task.d0;
    const StepPrefetch prefetch{task, t0, kc, task.d0, task.d1};
    prefetch.first(a.z, false);
    prefetch.first(a.out_rows, true);
    for (int64_t m = task.m0; m < task.m1; ++m) {
      const T* skip = a.D ? a.D + m * a.size.channels + task.d0 : nullptr;
      for (int64_t k = 0; k < kc; ++k) {
        prefetch.ahead(a.z, m - task.m0, k, false);
        prefetch.ahead(a.out_rows, m - task.m0, k, true);
        const T* y = y_rows + ((m - task.m0) * kChunk + k) * block_pitch;
        const T* u = a.u.at(task.b, m, task.d0, t0 + k);
        T* o = a.out_rows.at(task.b, m, task.d0, t0 + k);
        if (a.z.data) {
          const T* z = a.z.at(task.b, m, task.d0, t0 + k);
#pragma omp simd
          for (int64_t j = 0; j < real; ++j) o[j] = (y[j] + (skip ? skip[j] : T(0)) * u[j]) * (z[j] * scan_sigmoid(z[j]));
        } else {
#pragma omp simd
          for (int64_t j = 0; j < real; ++j) o[j] = y[j] + (skip ? skip[j] : T(0)) * u[j];
        }
      }
    }
    return;
  }
  const int64_t w = Simd<T>::width;
  for (int64_t m = task.m0; m < task.m1; ++m)
    for (int64_t v0 = 0; v0 < block_pitch; v0 += w) {
      transpose_rows(y_rows + (m - task.m0) * kChunk * block_pitch + v0, block_pitch, kc, w, columns, kChunk);
      for (int64_t j = 0; j < w && task.d0 + v0 + j < task.d1; ++j)
        store_outputs(a, task.b, m, task.d0 + v0 + j, t0, kc, columns + j * kChunk);
    }
}

// Rank-one coupling (W = alpha * ones over the group): one scalar state s = sum_m h^m per
// (b, d, n). h^m_t = alpha a^m_t s_{t-1} + dt u B, s_t = sum_m h^m_t. With a group of one
// modality and alpha = 1 this is the plain (uncoupled) selective scan. Scans the sample's first
// `steps` time steps.
template <typename T>
void forward_rank_one(const ForwardArgs<T>& a, const Task& task, int64_t steps, T alpha, T* scratch) {
  typedef typename Simd<T>::V V;
  const int64_t w = Simd<T>::width;
  const Sizes& s = a.size;
  const int64_t N = s.state, Np = padded_state(N), G = task.m1 - task.m0;
  const int64_t block_pitch = padded_block<T>(s.channels), vectors = (task.d1 - task.d0 + w - 1) / w;
  T* B_chunk = scratch;                            // [g][k][n]
  T* C_chunk = B_chunk + G * kChunk * Np;          // [g][k][n]
  T* A_block = C_chunk + G * kChunk * Np;          // [v][g][n][lane]
  T* state_sum = A_block + G * N * block_pitch;    // [v][n][lane]: s of every channel vector
  T* decays = state_sum + N * block_pitch;         // [g][n][lane]: exp(dt A) of one step
  T* final_h = decays + G * N * w;                 // [g][n][lane]: h^g of the final step
  T* dt_rows = final_h + G * N * w;                // [g][k][d]
  T* dtu_rows = dt_rows + G * kChunk * block_pitch;  // [g][k][d]: dt * u
  T* y_rows = dtu_rows + G * kChunk * block_pitch;   // [g][k][d]
  T* column = y_rows + G * kChunk * block_pitch;     // the [j][k] columns of one channel vector

  const bool nonpositive = load_block_A(a, task, block_pitch, A_block);
  for (int64_t i = 0; i < N * block_pitch; ++i) state_sum[i] = T(0);
  if (a.initial_state)
    for (int64_t d = task.d0; d < task.d1; ++d)
      for (int64_t m = task.m0; m < task.m1; ++m) {
        const T* h0 = a.initial_state + bmd_offset(s, task.b, m, d, N);
        const int64_t j = d - task.d0;
        for (int64_t n = 0; n < N; ++n) state_sum[((j / w) * N + n) * w + j % w] += h0[n];
      }

  auto save_checkpoint = [&](int64_t c) {
    for (int64_t d = task.d0; d < task.d1; ++d) {
      T* ck = a.checkpoints + checkpoint_offset(s, a.coupling, task.b, d, c, task.m0);
      const int64_t j = d - task.d0;
      for (int64_t n = 0; n < N; ++n) ck[n] = state_sum[((j / w) * N + n) * w + j % w];
    }
  };

  const int64_t chunks = num_chunks(a.coupling, steps);
  for (int64_t c = 0; c < chunks; ++c) {
    const auto [t0, kc] = chunk_span(a.coupling, c, steps);
    // B and C rows are L apart (often a power of two: cache-set conflicts), so copy the chunk.
    load_transposed(a.B, task.b, task.m0, task.m1, N, t0, kc, B_chunk);
    load_transposed(a.C, task.b, task.m0, task.m1, N, t0, kc, C_chunk);
    prefetch_forward_rows(a, task, t0, kc);
    load_block_steps(a, task, block_pitch, t0, kc, dt_rows, dtu_rows, column);
    if (a.checkpoints) save_checkpoint(c);
    for (int64_t k = 0; k < kc; ++k) {
      const bool final_step = t0 + k == steps - 1;
      for (int64_t v = 0; v < vectors; ++v) {
        T* sum_v = state_sum + v * N * w;
        V dtv[kMaxModalities], dtuv[kMaxModalities], y[kMaxModalities];
        load_step_vectors(dt_rows, G, k, block_pitch, v, dtv);
        load_step_vectors(dtu_rows, G, k, block_pitch, v, dtuv);
        rank_one_step(A_block + vector_A_offset<T>(v, G, N), sum_v, alpha, B_chunk + k * Np,
                      C_chunk + k * Np, kChunk * Np, dtv, dtuv, G, N, nonpositive, sum_v, y,  // s updated in place
                      final_step && a.last_state ? final_h : nullptr, decays);
        store_step_vectors(y, G, k, block_pitch, v, y_rows);
        if (final_step && a.last_state)  // h^m of the final step, lane by lane
          for (int64_t j = 0; j < w && task.d0 + v * w + j < task.d1; ++j)
            for (int64_t g = 0; g < G; ++g) {
              T* last = a.last_state + bmd_offset(s, task.b, task.m0 + g, task.d0 + v * w + j, N);
              for (int64_t n = 0; n < N; ++n) last[n] = final_h[(g * N + n) * w + j];
            }
      }
    }
    if (a.out_rows.data) store_block_outputs(a, task, block_pitch, t0, kc, y_rows, column);
  }
  // Chunks past the sample's length start from its final state.
  for (int64_t c = chunks; a.checkpoints && c < num_chunks(a.coupling, s.length); ++c) save_checkpoint(c);
  if (steps == 0 && a.last_state)  // no step: h^m is the initial state
    for (int64_t m = task.m0; m < task.m1; ++m)
      for (int64_t d = task.d0; d < task.d1; ++d) {
        const int64_t at = bmd_offset(s, task.b, m, d, N);
        for (int64_t n = 0; n < N; ++n) a.last_state[at + n] = a.initial_state ? a.initial_state[at + n] : T(0);
      }
}

// General coupling: an M-vector of states per (b, d, n); g^m = sum_i W[m, i] h^i. Scans the
// sample's first `steps` time steps.
template <typename T>
void forward_general(const ForwardArgs<T>& a, const Task& task, int64_t steps, T* scratch) {
  typedef typename Simd<T>::V V;
  const int64_t w = Simd<T>::width;
  const Sizes& s = a.size;
  const int64_t N = s.state, Np = padded_state(N), M = s.modalities;
  const int64_t block_pitch = padded_block<T>(s.channels), vectors = (task.d1 - task.d0 + w - 1) / w;
  T* B_chunk = scratch;                          // [m][k][n]
  T* C_chunk = B_chunk + M * kChunk * Np;        // [m][k][n]
  T* A_block = C_chunk + M * kChunk * Np;        // [v][m][n][lane]
  T* states = A_block + M * N * block_pitch;     // [v][m][n][lane]: h of every channel vector
  T* decays = states + M * N * block_pitch;      // [m][n][lane]: exp(dt A) of one step
  T* dt_rows = decays + M * N * w;               // [m][k][d]
  T* dtu_rows = dt_rows + M * kChunk * block_pitch;  // [m][k][d]: dt * u
  T* y_rows = dtu_rows + M * kChunk * block_pitch;   // [m][k][d]
  T* column = y_rows + M * kChunk * block_pitch;     // the [j][k] columns of one channel vector

  const bool nonpositive = load_block_A(a, task, block_pitch, A_block);
  for (int64_t i = 0; i < M * N * block_pitch; ++i) states[i] = T(0);
  if (a.initial_state)
    for (int64_t d = task.d0; d < task.d1; ++d)
      for (int64_t m = 0; m < M; ++m) {
        const T* h0 = a.initial_state + bmd_offset(s, task.b, m, d, N);
        const int64_t j = d - task.d0;
        for (int64_t n = 0; n < N; ++n) states[(((j / w) * M + m) * N + n) * w + j % w] = h0[n];
      }
  auto scatter_states = [&](int64_t c_or_last, bool last) {
    for (int64_t d = task.d0; d < task.d1; ++d) {
      const int64_t j = d - task.d0;
      for (int64_t m = 0; m < M; ++m) {
        T* dst = last ? a.last_state + bmd_offset(s, task.b, m, d, N)
                      : a.checkpoints + checkpoint_offset(s, a.coupling, task.b, d, c_or_last, 0) + m * N;
        for (int64_t n = 0; n < N; ++n) dst[n] = states[(((j / w) * M + m) * N + n) * w + j % w];
      }
    }
  };

  const int64_t chunks = num_chunks(a.coupling, steps);
  for (int64_t c = 0; c < chunks; ++c) {
    const auto [t0, kc] = chunk_span(a.coupling, c, steps);
    load_transposed(a.B, task.b, 0, M, N, t0, kc, B_chunk);
    load_transposed(a.C, task.b, 0, M, N, t0, kc, C_chunk);
    prefetch_forward_rows(a, task, t0, kc);
    load_block_steps(a, task, block_pitch, t0, kc, dt_rows, dtu_rows, column);
    if (a.checkpoints) scatter_states(c, false);
    for (int64_t k = 0; k < kc; ++k) {
      for (int64_t v = 0; v < vectors; ++v) {
        T* states_v = states + v * M * N * w;
        V dtv[kMaxModalities], dtuv[kMaxModalities], y[kMaxModalities];
        load_step_vectors(dt_rows, M, k, block_pitch, v, dtv);
        load_step_vectors(dtu_rows, M, k, block_pitch, v, dtuv);
        step_decays(A_block + vector_A_offset<T>(v, M, N), dtv, M, N, nonpositive, decays);
        general_step(a.W, M, decays, states_v, B_chunk + k * Np, C_chunk + k * Np, kChunk * Np, dtuv, N, states_v,
                     y);  // the states updated in place
        store_step_vectors(y, M, k, block_pitch, v, y_rows);
      }
    }
    if (a.out_rows.data) store_block_outputs(a, task, block_pitch, t0, kc, y_rows, column);
  }
  // Chunks past the sample's length start from its final state.
  for (int64_t c = chunks; a.checkpoints && c < num_chunks(a.coupling, s.length); ++c) scatter_states(c, false);
  if (a.last_state) scatter_states(0, true);
}

template <typename T>
void forward_task(const ForwardArgs<T>& a, int64_t index, T* scratch) {
  const Task task = decode_task(index, a.size, a.coupling);
  const int64_t L = a.size.length, steps = sample_length(a.lengths, task.b, L);
  if (a.out_rows.data && steps < L)  // steps past the sample's length are not scanned; their output is 0
    for (int64_t m = task.m0; m < task.m1; ++m)
      for (int64_t d = task.d0; d < task.d1; ++d)
        for (int64_t t = steps; t < L; ++t) *a.out_rows.at(task.b, m, d, t) = T(0);
  switch (a.coupling) {
    case CouplingKind::kRankOne: forward_rank_one(a, task, steps, a.alpha, scratch); break;
    case CouplingKind::kNone: forward_rank_one(a, task, steps, T(1), scratch); break;
    case CouplingKind::kGeneral: forward_general(a, task, steps, scratch); break;
  }
}

}  // namespace CS_ISA
}  // namespace cpu
}  // namespace coupled_scan
