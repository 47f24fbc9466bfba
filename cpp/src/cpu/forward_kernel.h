// CPU forward kernels of the coupled selective scan, one task = (batch b, channel block,
// modality group). Compiled once per instruction set: the including file defines CS_ISA, the
// namespace that keeps each compilation's templates apart.
//
// Loop order per task: time chunks outer (B and C of the chunk are transposed once and shared
// by every channel of the block), channels, then time steps, modalities, and the state axis n
// innermost and vectorised. States live in task scratch; only checkpoints leave it.
#pragma once

#include "chunk_inputs.h"

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
  const int64_t N = s.state, cb = channel_block(s.channels);
  const int64_t states = kind == CouplingKind::kGeneral ? G * N : N;
  return 2 * G * kChunk * N          // transposed B and C chunk
         + cb * states               // the state of every channel in the block
         + 3 * G * N                 // next state, coupled state g, alpha * state
         + 2 * G * kChunk;           // dt, dt * u
}

// Write y (plus skip and gate) of one step.
template <typename T>
CS_HD void store_output(const ForwardArgs<T>& a, int64_t b, int64_t m, int64_t d, int64_t t, T y) {
  const Sizes& s = a.size;
  const T u = a.u.row(b, m, d)[t];
  if (a.D) y += a.D[m * s.channels + d] * u;
  if (a.z.data) y *= silu(a.z.row(b, m, d)[t]);
  a.out[bmd_offset(s, b, m, d, s.length) + t] = y;
}

// Rank-one coupling (W = alpha * ones over the group): one scalar state s = sum_m h^m per
// (b, d, n). h^m_t = alpha a^m_t s_{t-1} + dt u B, s_t = sum_m h^m_t. With a group of one
// modality and alpha = 1 this is the plain (uncoupled) selective scan.
template <typename T>
void forward_rank_one(const ForwardArgs<T>& a, const Task& task, T alpha, T* scratch) {
  const Sizes& s = a.size;
  const int64_t N = s.state, L = s.length, G = task.m1 - task.m0;
  T* Bt = scratch;
  T* Ct = Bt + G * kChunk * N;
  T* state = Ct + G * kChunk * N;
  T* next = state + (task.d1 - task.d0) * N;
  T* scaled = next + G * N;
  T* dt = scaled + 2 * G * N;
  T* dtu = dt + G * kChunk;

  const int64_t nch = num_chunks(L);
  for (int64_t c = 0; c < nch; ++c) {
    const int64_t t0 = c * kChunk, kc = L - t0 < kChunk ? L - t0 : kChunk;
    load_transposed(a.B, task.b, task.m0, task.m1, N, t0, kc, Bt);
    load_transposed(a.C, task.b, task.m0, task.m1, N, t0, kc, Ct);
    for (int64_t d = task.d0; d < task.d1; ++d) {
      T* st = state + (d - task.d0) * N;
      if (c == 0) {
        for (int64_t n = 0; n < N; ++n) st[n] = T(0);
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
      for (int64_t g = 0; g < G; ++g)
        load_steps(a, task.b, task.m0 + g, d, t0, kc, dt + g * kChunk, dtu + g * kChunk);

      for (int64_t k = 0; k < kc; ++k) {
        const int64_t t = t0 + k;
#pragma omp simd
        for (int64_t n = 0; n < N; ++n) {
          scaled[n] = alpha * st[n];
          next[n] = T(0);
        }
        for (int64_t g = 0; g < G; ++g) {
          const int64_t m = task.m0 + g;
          const T* Arow = a.A + (m * s.channels + d) * N;
          const T* Bk = Bt + (g * kChunk + k) * N;
          const T* Ck = Ct + (g * kChunk + k) * N;
          const T dtv = dt[g * kChunk + k], dtuv = dtu[g * kChunk + k];
          T y = T(0);
#pragma omp simd reduction(+ : y)
          for (int64_t n = 0; n < N; ++n) {
            const T h = scan_exp(dtv * Arow[n]) * scaled[n] + dtuv * Bk[n];
            y += Ck[n] * h;
            next[n] += h;
          }
          if (a.out) store_output(a, task.b, m, d, t, y);
          if (t == L - 1 && a.last_state) {
            T* last = a.last_state + bmd_offset(s, task.b, m, d, N);
            for (int64_t n = 0; n < N; ++n) last[n] = scan_exp(dtv * Arow[n]) * scaled[n] + dtuv * Bk[n];
          }
        }
        for (int64_t n = 0; n < N; ++n) st[n] = next[n];
      }
    }
  }
}

// General coupling: an M-vector of states per (b, d, n); g^m = sum_i W[m, i] h^i.
template <typename T>
void forward_general(const ForwardArgs<T>& a, const Task& task, T* scratch) {
  const Sizes& s = a.size;
  const int64_t N = s.state, L = s.length, M = s.modalities;
  T* Bt = scratch;
  T* Ct = Bt + M * kChunk * N;
  T* state = Ct + M * kChunk * N;
  T* next = state + (task.d1 - task.d0) * M * N;
  T* coupled = next + M * N;
  T* dt = coupled + 2 * M * N;
  T* dtu = dt + M * kChunk;

  const int64_t nch = num_chunks(L);
  for (int64_t c = 0; c < nch; ++c) {
    const int64_t t0 = c * kChunk, kc = L - t0 < kChunk ? L - t0 : kChunk;
    load_transposed(a.B, task.b, 0, M, N, t0, kc, Bt);
    load_transposed(a.C, task.b, 0, M, N, t0, kc, Ct);
    for (int64_t d = task.d0; d < task.d1; ++d) {
      T* h = state + (d - task.d0) * M * N;
      if (c == 0)
        for (int64_t m = 0; m < M; ++m) {
          const T* h0 = a.initial_state ? a.initial_state + bmd_offset(s, task.b, m, d, N) : nullptr;
          for (int64_t n = 0; n < N; ++n) h[m * N + n] = h0 ? h0[n] : T(0);
        }
      if (a.checkpoints) {
        T* ck = a.checkpoints + checkpoint_offset(s, a.coupling, task.b, d, c, 0);
        for (int64_t i = 0; i < M * N; ++i) ck[i] = h[i];
      }
      for (int64_t m = 0; m < M; ++m) load_steps(a, task.b, m, d, t0, kc, dt + m * kChunk, dtu + m * kChunk);

      for (int64_t k = 0; k < kc; ++k) {
        const int64_t t = t0 + k;
        for (int64_t m = 0; m < M; ++m) {
          T* gm = coupled + m * N;
          for (int64_t n = 0; n < N; ++n) gm[n] = T(0);
          for (int64_t i = 0; i < M; ++i) {
            const T w = a.W[m * M + i];
            const T* hi = h + i * N;
#pragma omp simd
            for (int64_t n = 0; n < N; ++n) gm[n] += w * hi[n];
          }
        }
        for (int64_t m = 0; m < M; ++m) {
          const T* Arow = a.A + (m * s.channels + d) * N;
          const T* Bk = Bt + (m * kChunk + k) * N;
          const T* Ck = Ct + (m * kChunk + k) * N;
          const T* gm = coupled + m * N;
          T* hm = next + m * N;
          const T dtv = dt[m * kChunk + k], dtuv = dtu[m * kChunk + k];
          T y = T(0);
#pragma omp simd reduction(+ : y)
          for (int64_t n = 0; n < N; ++n) {
            const T hv = scan_exp(dtv * Arow[n]) * gm[n] + dtuv * Bk[n];
            hm[n] = hv;
            y += Ck[n] * hv;
          }
          if (a.out) store_output(a, task.b, m, d, t, y);
        }
        for (int64_t i = 0; i < M * N; ++i) h[i] = next[i];
      }
      if (c == nch - 1 && a.last_state)
        for (int64_t m = 0; m < M; ++m) {
          T* last = a.last_state + bmd_offset(s, task.b, m, d, N);
          for (int64_t n = 0; n < N; ++n) last[n] = h[m * N + n];
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
