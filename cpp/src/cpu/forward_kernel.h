// CPU forward kernels of the coupled selective scan, one task = (batch b, channel block,
// modality group). Compiled once per instruction set: the including file defines CS_ISA, the
// namespace that keeps each compilation's templates apart.
//
// Loop order per task: time chunks outer (B and C of the chunk are transposed once and shared
// by every channel of the block), channels, then time steps, modalities, and the state axis n
// innermost and vectorised. States live in task scratch; only checkpoints leave it.
#pragma once

#include "chunk_inputs.h"
#include "simd_block.h"

#ifndef CS_ISA
#error "define CS_ISA (the instruction-set namespace) before including forward_kernel.h"
#endif

namespace coupled_scan {
namespace cpu {
namespace CS_ISA {

// Scratch elements for one forward task (state rows padded to Np).
template <typename T>
int64_t forward_scratch(const Sizes& s, CouplingKind kind) {
  const int64_t G = modality_grouping(kind, s.modalities).width;
  const int64_t Np = padded_state(s.state), cb = channel_block(s.channels);
  const int64_t states = kind == CouplingKind::kGeneral ? G * Np : Np;
  return 2 * G * kChunk * Np         // transposed B and C chunk
         + cb * states               // the state of every channel in the block
         + 3 * G * Np                // next state, coupled state, A rows
         + 3 * G * kChunk;           // dt, dt * u, y
}

// Write out = (y + D u) * silu(z) for steps t0 .. t0+kc of one (b, m, d); y = sum_n C h.
template <typename T>
CS_HD void store_outputs(const ForwardArgs<T>& a, int64_t b, int64_t m, int64_t d, int64_t t0, int64_t kc,
                         const T* y) {
  const Sizes& s = a.size;
  const T* u = a.u.row(b, m, d) + t0;
  const T skip = a.D ? a.D[m * s.channels + d] : T(0);
  T* o = a.out + bmd_offset(s, b, m, d, s.length) + t0;
  if (a.z.data) {
    const T* z = a.z.row(b, m, d) + t0;
#pragma omp simd
    for (int64_t k = 0; k < kc; ++k) o[k] = (y[k] + skip * u[k]) * (z[k] * scan_sigmoid(z[k]));
  } else {
#pragma omp simd
    for (int64_t k = 0; k < kc; ++k) o[k] = y[k] + skip * u[k];
  }
}

// Rank-one coupling (W = alpha * ones over the group): one scalar state s = sum_m h^m per
// (b, d, n). h^m_t = alpha a^m_t s_{t-1} + dt u B, s_t = sum_m h^m_t. With a group of one
// modality and alpha = 1 this is the plain (uncoupled) selective scan.
template <typename T>
void forward_rank_one(const ForwardArgs<T>& a, const Task& task, T alpha, T* scratch) {
  const Sizes& s = a.size;
  const int64_t N = s.state, Np = padded_state(N), L = s.length, G = task.m1 - task.m0;
  T* Bt = scratch;
  T* Ct = Bt + G * kChunk * Np;
  T* state = Ct + G * kChunk * Np;
  T* next = state + (task.d1 - task.d0) * Np;
  T* Arows = next + G * Np;
  T* dt = Arows + 2 * G * Np;
  T* dtu = dt + G * kChunk;
  T* ys = dtu + G * kChunk;

  const int64_t nch = num_chunks(L);
  for (int64_t c = 0; c < nch; ++c) {
    const int64_t t0 = c * kChunk, kc = L - t0 < kChunk ? L - t0 : kChunk;
    load_transposed(a.B, task.b, task.m0, task.m1, N, t0, kc, Bt);
    load_transposed(a.C, task.b, task.m0, task.m1, N, t0, kc, Ct);
    for (int64_t d = task.d0; d < task.d1; ++d) {
      T* st = state + (d - task.d0) * Np;
      if (c == 0) {
        for (int64_t n = 0; n < Np; ++n) st[n] = T(0);
        if (a.initial_state)
          for (int64_t m = task.m0; m < task.m1; ++m) {
            const T* h0 = a.initial_state + bmd_offset(s, task.b, m, d, N);
            for (int64_t n = 0; n < N; ++n) st[n] += h0[n];
          }
      }
      if (a.checkpoints) {
        T* ck = a.checkpoints + checkpoint_offset(s, a.coupling, task.b, d, c, task.m0);
        for (int64_t n = 0; n < N; ++n) ck[n] = st[n];
      }
      load_A_rows(a, task.m0, task.m1, d, Arows);
      for (int64_t g = 0; g < G; ++g)
        load_steps(a, task.b, task.m0 + g, d, t0, kc, dt + g * kChunk, dtu + g * kChunk);

      for (int64_t k = 0; k < kc; ++k) {
        for (int64_t g = 0; g < G; ++g) {
          const T* Bk = Bt + (g * kChunk + k) * Np;
          const T* Ck = Ct + (g * kChunk + k) * Np;
          const T dtv = dt[g * kChunk + k], dtuv = dtu[g * kChunk + k];
          ys[g * kChunk + k] = state_step(Arows + g * Np, st, alpha, Bk, Ck, next, static_cast<T*>(nullptr), dtv,
                                          dtuv, N, Np, g > 0);
          if (t0 + k == L - 1 && a.last_state) {  // h^m of the final step
            const T* Arow = Arows + g * Np;
            T* last = a.last_state + bmd_offset(s, task.b, task.m0 + g, d, N);
            for (int64_t n = 0; n < N; ++n) last[n] = scan_exp(dtv * Arow[n]) * (alpha * st[n]) + dtuv * Bk[n];
          }
        }
        for (int64_t n = 0; n < Np; ++n) st[n] = next[n];
      }
      if (a.out)
        for (int64_t g = 0; g < G; ++g) store_outputs(a, task.b, task.m0 + g, d, t0, kc, ys + g * kChunk);
    }
  }
}

// General coupling: an M-vector of states per (b, d, n); g^m = sum_i W[m, i] h^i.
template <typename T>
void forward_general(const ForwardArgs<T>& a, const Task& task, T* scratch) {
  const Sizes& s = a.size;
  const int64_t N = s.state, Np = padded_state(N), L = s.length, M = s.modalities, MN = M * Np;
  T* Bt = scratch;
  T* Ct = Bt + M * kChunk * Np;
  T* state = Ct + M * kChunk * Np;
  T* next = state + (task.d1 - task.d0) * MN;
  T* coupled = next + MN;
  T* Arows = coupled + MN;
  T* dt = Arows + MN;
  T* dtu = dt + M * kChunk;
  T* ys = dtu + M * kChunk;

  const int64_t nch = num_chunks(L);
  for (int64_t c = 0; c < nch; ++c) {
    const int64_t t0 = c * kChunk, kc = L - t0 < kChunk ? L - t0 : kChunk;
    load_transposed(a.B, task.b, 0, M, N, t0, kc, Bt);
    load_transposed(a.C, task.b, 0, M, N, t0, kc, Ct);
    for (int64_t d = task.d0; d < task.d1; ++d) {
      T* h = state + (d - task.d0) * MN;
      if (c == 0)
        for (int64_t m = 0; m < M; ++m) {
          const T* h0 = a.initial_state ? a.initial_state + bmd_offset(s, task.b, m, d, N) : nullptr;
          for (int64_t n = 0; n < Np; ++n) h[m * Np + n] = h0 && n < N ? h0[n] : T(0);
        }
      if (a.checkpoints) {
        T* ck = a.checkpoints + checkpoint_offset(s, a.coupling, task.b, d, c, 0);
        for (int64_t m = 0; m < M; ++m)
          for (int64_t n = 0; n < N; ++n) ck[m * N + n] = h[m * Np + n];
      }
      load_A_rows(a, 0, M, d, Arows);
      for (int64_t m = 0; m < M; ++m) load_steps(a, task.b, m, d, t0, kc, dt + m * kChunk, dtu + m * kChunk);

      for (int64_t k = 0; k < kc; ++k) {
        for (int64_t m = 0; m < M; ++m) {
          T* gm = coupled + m * Np;
          for (int64_t n = 0; n < Np; ++n) gm[n] = T(0);
          for (int64_t i = 0; i < M; ++i) {
            const T w = a.W[m * M + i];
            const T* hi = h + i * Np;
#pragma omp simd
            for (int64_t n = 0; n < Np; ++n) gm[n] += w * hi[n];
          }
        }
        for (int64_t m = 0; m < M; ++m) {
          const T* Bk = Bt + (m * kChunk + k) * Np;
          const T* Ck = Ct + (m * kChunk + k) * Np;
          ys[m * kChunk + k] = state_step(Arows + m * Np, coupled + m * Np, T(1), Bk, Ck, next + m * Np,
                                          static_cast<T*>(nullptr), dt[m * kChunk + k], dtu[m * kChunk + k], N,
                                          Np, false);
        }
        for (int64_t i = 0; i < MN; ++i) h[i] = next[i];
      }
      if (a.out)
        for (int64_t m = 0; m < M; ++m) store_outputs(a, task.b, m, d, t0, kc, ys + m * kChunk);
      if (c == nch - 1 && a.last_state)
        for (int64_t m = 0; m < M; ++m) {
          T* last = a.last_state + bmd_offset(s, task.b, m, d, N);
          for (int64_t n = 0; n < N; ++n) last[n] = h[m * Np + n];
        }
    }
  }
}

template <typename T>
void forward_task(const ForwardArgs<T>& a, int64_t index, T* scratch) {
  const Task task = decode_task(index, a.size, a.coupling);
  switch (a.coupling) {
    case CouplingKind::kRankOne: forward_rank_one(a, task, a.alpha, scratch); break;
    case CouplingKind::kNone: forward_rank_one(a, task, T(1), scratch); break;
    case CouplingKind::kGeneral: forward_general(a, task, scratch); break;
  }
}

}  // namespace CS_ISA
}  // namespace cpu
}  // namespace coupled_scan
