// Helpers shared by the CPU forward and backward kernels: how work is split into tasks, and
// loading one time chunk of the per-step inputs into task-local scratch.
#pragma once

#include <cstdint>

#include "coupled_scan/coupled_scan.h"
#include "coupled_scan/math.h"

namespace coupled_scan {
namespace cpu {

// Channels are processed in fixed blocks; a task is (batch, channel block, modality group).
// Every channel of a block reuses the block's transposed B and C chunk, so blocks of at least 32
// channels keep that copy cheap; at most 16 blocks per batch row bound the backward's per-block
// partial sums of dB and dC. The size depends on D only, so results never depend on the threads.
CS_HD int64_t channel_block(int64_t channels) {
  const int64_t even = (channels + 15) / 16;
  return even > 32 ? even : 32;
}

// Modality groups: the rank-one and general paths couple all M modalities in one task; "none"
// runs each modality as its own group (one scalar state per (b, d, n), alpha = 1).
struct Grouping {
  int64_t groups;  // number of groups
  int64_t width;   // modalities per group
};
CS_HD Grouping modality_grouping(CouplingKind kind, int64_t modalities) {
  if (kind == CouplingKind::kNone) return {modalities, 1};
  return {1, modalities};
}

struct Task {
  int64_t b, block, d0, d1, m0, m1;
};
CS_HD Task decode_task(int64_t task, const Sizes& s, CouplingKind kind) {
  const Grouping grp = modality_grouping(kind, s.modalities);
  const int64_t cb = channel_block(s.channels);
  const int64_t nblk = (s.channels + cb - 1) / cb;
  Task t;
  const int64_t group = task % grp.groups;
  t.block = (task / grp.groups) % nblk;
  t.b = task / (grp.groups * nblk);
  t.d0 = t.block * cb;
  t.d1 = t.d0 + cb < s.channels ? t.d0 + cb : s.channels;
  t.m0 = group * grp.width;
  t.m1 = t.m0 + grp.width;
  return t;
}
CS_HD int64_t num_tasks(const Sizes& s, CouplingKind kind) {
  const int64_t cb = channel_block(s.channels);
  return s.batch * ((s.channels + cb - 1) / cb) * modality_grouping(kind, s.modalities).groups;
}

// The state axis is processed in blocks of kLanes values (one AVX-512 register of floats; the
// compiler splits it for narrower instruction sets). Scratch rows are padded to a whole number of
// blocks with zeros, which keeps the padded states at exactly zero.
constexpr int64_t kLanes = 16;
CS_HD int64_t padded_state(int64_t N) { return (N + kLanes - 1) / kLanes * kLanes; }

// dt and dt * u for one (b, m, d) over steps t0 .. t0+kc of the chunk; with `slope`, also
// d dt / d delta (sigmoid of the pre-activation under softplus, else 1) for the backward.
template <typename T>
CS_HD void load_steps(const ForwardArgs<T>& a, int64_t b, int64_t m, int64_t d, int64_t t0, int64_t kc,
                      T* dt, T* dtu, T* slope = nullptr) {
  const T* u = a.u.row(b, m, d) + t0;
  const T* dl = a.delta.row(b, m, d) + t0;
  const T bias = a.delta_bias ? a.delta_bias[m * a.size.channels + d] : T(0);
  if (a.delta_softplus && slope) {  // the backward: softplus and its slope share one exponential
#pragma omp simd
    for (int64_t k = 0; k < kc; ++k) {
      const T v = scan_softplus_sigmoid(dl[k] + bias, slope + k);
      dt[k] = v;
      dtu[k] = v * u[k];
    }
  } else if (a.delta_softplus) {
#pragma omp simd
    for (int64_t k = 0; k < kc; ++k) {
      const T v = scan_softplus(dl[k] + bias);
      dt[k] = v;
      dtu[k] = v * u[k];
    }
  } else {
#pragma omp simd
    for (int64_t k = 0; k < kc; ++k) {
      dt[k] = dl[k] + bias;
      dtu[k] = dt[k] * u[k];
    }
    if (slope)
      for (int64_t k = 0; k < kc; ++k) slope[k] = T(1);
  }
}

// load_steps for step-major inputs: dt, dt * u (and the slope) of the block's channels at step t
// of modality m, into rows of block_pitch (padding channels get 0, which keeps their state at 0).
template <typename T>
CS_HD void load_step_channels(const ForwardArgs<T>& a, const Task& task, int64_t block_pitch, int64_t m, int64_t t,
                              T* dt, T* dtu, T* slope) {
  const int64_t real = task.d1 - task.d0;
  const T* u = a.u.at(task.b, m, task.d0, t);
  const T* dl = a.delta.at(task.b, m, task.d0, t);
  const T* bias = a.delta_bias ? a.delta_bias + m * a.size.channels + task.d0 : nullptr;
  if (a.delta_softplus && slope) {
#pragma omp simd
    for (int64_t j = 0; j < real; ++j) {
      const T v = scan_softplus_sigmoid(dl[j] + (bias ? bias[j] : T(0)), slope + j);
      dt[j] = v;
      dtu[j] = v * u[j];
    }
  } else if (a.delta_softplus) {
#pragma omp simd
    for (int64_t j = 0; j < real; ++j) {
      const T v = scan_softplus(dl[j] + (bias ? bias[j] : T(0)));
      dt[j] = v;
      dtu[j] = v * u[j];
    }
  } else {
#pragma omp simd
    for (int64_t j = 0; j < real; ++j) {
      dt[j] = dl[j] + (bias ? bias[j] : T(0));
      dtu[j] = dt[j] * u[j];
    }
    if (slope)
      for (int64_t j = 0; j < real; ++j) slope[j] = T(1);
  }
  for (int64_t j = real; j < block_pitch; ++j) {
    dt[j] = dtu[j] = T(0);
    if (slope) slope[j] = T(0);
  }
}

// Asks the caches for the bytes [first, first + bytes), a line at a time.
CS_HD void prefetch_span(const void* first, int64_t bytes, bool write) {
#if defined(__GNUC__) && !defined(__CUDA_ARCH__)
  constexpr std::uintptr_t kLine = 64;
  const std::uintptr_t begin = reinterpret_cast<std::uintptr_t>(first);
  const std::uintptr_t end = begin + static_cast<std::uintptr_t>(bytes);
  for (std::uintptr_t line = begin & ~(kLine - 1); line < end; line += kLine) {
    if (write)
      __builtin_prefetch(reinterpret_cast<const void*>(line), 1, 3);
    else
      __builtin_prefetch(reinterpret_cast<const void*>(line), 0, 3);
  }
#else
  (void)first, (void)bytes, (void)write;
#endif
}

// Asks the caches for the rows (b, m, d) of X over steps t0 .. t0+kc of the task's modalities
// and channels, ahead of their use (write: rows the chunk will store into). In a model the rows
// of one task lie far apart (a channel-major (M, channels, batch, L) layout puts a sample's
// channels batch * L apart; the token-major one a step's channels a whole row of channels after
// the previous step's) and each is a few cache lines, so loaded as they are needed they miss one
// after the other; asked for together at the start of the chunk, the misses overlap (without it the
// step-major forward ran 4% to 9% slower). Step-major tensors: one run of the rows per step. Rows
// r0 .. r1 of each modality (default: the task's channels).
template <typename T>
CS_HD void prefetch_rows(const SeqTensor<T>& X, const Task& task, int64_t t0, int64_t kc, bool write,
                         int64_t r0 = -1, int64_t r1 = -1) {
  if (!X.data || kc <= 0) return;
  if (r0 < 0) r0 = task.d0, r1 = task.d1;
  for (int64_t m = task.m0; m < task.m1; ++m) {
    if (X.step_major())
      for (int64_t t = t0; t < t0 + kc; ++t) prefetch_span(X.at(task.b, m, r0, t), (r1 - r0) * sizeof(T), write);
    else
      for (int64_t d = r0; d < r1; ++d) prefetch_span(X.row(task.b, m, d) + t0, kc * sizeof(T), write);
  }
}

// Step-major tensors put a step's channels a whole row after the previous step's (1 KB at 256
// channels): too far apart for the hardware prefetchers. Asked for all at a chunk's start
// (prefetch_rows), a task's few thousand lines stalled the loads behind them and partly left L1
// before their use; so the loops over a chunk's (modality, step) pairs ask for the pair
// kStepsAhead pairs on instead (forward and backward 4% to 23% faster at the paper's sizes).
constexpr int64_t kStepsAhead = 16;

// Prefetches for the loops over a chunk's (modality g, step k) pairs of channels d0 .. d1, g outer.
struct StepPrefetch {
  const Task& task;
  int64_t t0, kc, d0, d1;

  // Pair (g, k), where k may run past the chunk into the next modalities' steps; none past the last.
  template <typename T>
  CS_HD void pair(const SeqTensor<T>& X, int64_t g, int64_t k, bool write) const {
    for (; k >= kc && kc > 0; k -= kc) ++g;
    if (X.data && k < kc && g < task.m1 - task.m0)
      prefetch_span(X.at(task.b, task.m0 + g, d0, t0 + k), (d1 - d0) * sizeof(T), write);
  }
  // Before the loop: the pairs its first kStepsAhead iterations do not ask for.
  template <typename T>
  CS_HD void first(const SeqTensor<T>& X, bool write) const {
    for (int64_t k = 0; k < kStepsAhead; ++k) pair(X, 0, k, write);
  }
  // In the loop, at pair (g, k).
  template <typename T>
  CS_HD void ahead(const SeqTensor<T>& X, int64_t g, int64_t k, bool write) const {
    pair(X, g, k + kStepsAhead, write);
  }
};

// The rows a forward chunk reads (B, C, delta, u, z) and writes (out); step-major delta, u, z and
// out are asked for by the loops that use them (StepPrefetch).
template <typename T>
CS_HD void prefetch_forward_rows(const ForwardArgs<T>& a, const Task& task, int64_t t0, int64_t kc) {
  prefetch_rows(a.B, task, t0, kc, false, 0, a.size.state);
  prefetch_rows(a.C, task, t0, kc, false, 0, a.size.state);
  if (a.u.step_major()) return;
  prefetch_rows(a.delta, task, t0, kc, false);
  prefetch_rows(a.u, task, t0, kc, false);
  prefetch_rows(a.z, task, t0, kc, false);
  prefetch_rows(a.out_rows, task, t0, kc, true);
}

// Offset of the (b, m, d) row of a contiguous (Bt, M, D, X) tensor.
CS_HD int64_t bmd_offset(const Sizes& s, int64_t b, int64_t m, int64_t d, int64_t x) {
  return ((b * s.modalities + m) * s.channels + d) * x;
}

// Chunk c of a sample scanned over `steps` steps: its first step and its number of steps.
struct ChunkSpan {
  int64_t t0, kc;
};
CS_HD ChunkSpan chunk_span(CouplingKind kind, int64_t c, int64_t steps) {
  const int64_t chunk = chunk_length(kind), t0 = c * chunk;
  return {t0, steps - t0 < chunk ? steps - t0 : chunk};
}

// The first state slot of task modalities inside a checkpoint row.
CS_HD int64_t checkpoint_offset(const Sizes& s, CouplingKind kind, int64_t b, int64_t d,
                                 int64_t chunk, int64_t m0) {
  const int64_t width = checkpoint_width(kind, s.modalities, s.state);
  const int64_t base = ((b * s.channels + d) * num_chunks(kind, s.length) + chunk) * width;
  return base + (kind == CouplingKind::kNone ? m0 * s.state : 0);
}

}  // namespace cpu
}  // namespace coupled_scan
