// How the CUDA kernels split the work: the thread-block layout, the shared-memory map and the
// backward's workspace map. Host and device code (and the CPU emulation in the tests) read the
// same plan, so the layout is written down once.
//
// Layout (chosen for determinism and no cross-lane shuffles; see docs/cuda.md):
//   one thread block = one batch element b x 32 consecutive channels d (the lanes of a warp)
//                      x G = ceil(N / 8) warps, warp g owning states n = 8g .. 8g + 7
//                      x one time segment (all of L, unless the grid is too small to fill the
//                      GPU: then L splits into segments of whole chunks, see segments below);
//   each thread walks time sequentially, keeping its 8 states (x M for the vector path) in
//   registers; sums over n cross the G warps through shared memory, sums over d (dB, dC)
//   cross the 32 lanes through shared memory and the channel blocks through a workspace that
//   a second kernel reduces in a fixed order.
#pragma once

#include <cstdint>

#include "coupled_scan/coupled_scan.h"
#include "coupled_scan/coupled_scan_cuda.h"

namespace coupled_scan {
namespace gpu {

constexpr int kRows = 32;    // channels per block: one per lane
constexpr int kStates = 8;   // states per thread
constexpr int kPad = 33;     // row pitch of [.][32] shared arrays: column walks avoid bank conflicts

struct BlockPlan {
  int64_t Bt = 0, D = 0, L = 0;
  int M = 0, N = 0;
  int G = 0;             // warps per block (state groups)
  int threads = 0;       // 32 * G
  int chunk = 0;         // time steps per checkpoint chunk (cuda_chunk)
  int sub = 0;           // time steps per y-reduction round (divides chunk)
  int tiles = 1;         // backward: rounds that sum the dB / dC terms of one (step, modality)
  int tile_groups = 0;   // state groups per such round (the last may hold fewer)
  int64_t row_blocks = 0;  // ceil(D / 32)
  int64_t segments = 1;    // time segments (1: one block walks all of L)
  int64_t seg_chunks = 0;  // chunks per segment
  int64_t blocks = 0;      // Bt * row_blocks * segments
  int64_t chunks = 0;      // num_cuda_chunks(L, coupling)
  int width = 0;           // carried values per (b, d): N (rank one) or M * N (vector path)
  // Offsets (in floats) of the shared arrays; `smem_floats` is the total.
  int off_dt = 0, off_u = 0, off_dy = 0, off_part = 0, off_red = 0, off_nsum = 0, off_acc = 0;
  int smem_floats = 0;
  CS_HD int tile_states() const { return tile_groups * kStates; }
};

// Shared arrays. Chunk arrays [M][chunk][kPad]: dt and u (forward), plus dy (backward); in the
// backward, accumulators of dD / d delta_bias [2][M][kPad]. Then one area that two uses share,
// since no phase touches both: the y partials of a round [sub][M][G][kPad] (forward walk,
// backward recomputation), and in the backward's reverse walk the dB / dC terms of one tile of
// state groups [2][tile_groups * 8][kPad] plus the du / d dt partials [2][G][kPad].
inline BlockPlan layout(BlockPlan p, bool backward, int sub, int tiles) {
  p.sub = sub;
  p.tile_groups = (p.G + tiles - 1) / tiles;
  p.tiles = (p.G + p.tile_groups - 1) / p.tile_groups;
  const int chunk_array = p.M * p.chunk * kPad;
  int off = 0;
  p.off_dt = off, off += chunk_array;
  p.off_u = off, off += chunk_array;
  if (backward) {
    p.off_dy = off, off += chunk_array;
    p.off_acc = off, off += 2 * p.M * kPad;
  }
  const int part = sub * p.M * p.G * kPad;
  const int red = backward ? 2 * p.tile_states() * kPad : 0, nsum = backward ? 2 * p.G * kPad : 0;
  p.off_part = p.off_red = off;
  p.off_nsum = off + red;
  p.smem_floats = off + (part > red + nsum ? part : red + nsum);
  return p;
}

inline int64_t smem_bytes(const BlockPlan& p) { return int64_t(p.smem_floats) * 4; }

// The plan for a shared-memory budget: the longest reduction rounds that fit; where even rounds
// of one step do not, the backward sums its dB / dC terms in 2, 4, ... tiles of state groups
// (up to `max_tiles`; each extra tile costs two barriers per step and modality). When nothing
// fits, the smallest layout (the caller then reports what it needs).
inline BlockPlan make_plan(const Sizes& s, CouplingKind kind, bool backward, int64_t smem_budget_bytes,
                           int max_tiles) {
  BlockPlan p;
  p.Bt = s.batch;
  p.D = s.channels;
  p.L = s.length;
  p.M = static_cast<int>(s.modalities);
  p.N = static_cast<int>(s.state);
  p.G = (p.N + kStates - 1) / kStates;
  p.threads = kRows * p.G;
  p.row_blocks = (p.D + kRows - 1) / kRows;
  p.blocks = p.Bt * p.row_blocks;  // one segment; with_segments() splits time
  p.chunk = static_cast<int>(cuda_chunk(kind));
  p.chunks = num_cuda_chunks(p.L, kind);
  p.seg_chunks = p.chunks;
  p.width = static_cast<int>(checkpoint_width(kind, p.M, p.N));
  if (!backward || max_tiles < 1) max_tiles = 1;
  BlockPlan q;
  for (int tiles = 1;; tiles *= 2) {
    for (int sub = p.chunk; sub >= 1; sub /= 2) {
      q = layout(p, backward, sub, tiles);
      if (smem_bytes(q) <= smem_budget_bytes) return q;
    }
    if (q.tiles >= p.G || 2 * tiles > max_tiles) return q;
  }
}

// Up to 64 KB per block the plan takes the longest reduction rounds (in one tile); beyond, the
// longest rounds and fewest tiles that fit `limit` (the GPU's opt-in maximum, e.g. 99 KB on
// sm_86 / sm_89, 163 KB on an A100). Small blocks keep more of them resident per SM, which
// matters more than the rounds' barriers.
constexpr int64_t kPreferredSmemBytes = 64 * 1024;

inline BlockPlan plan_for(const Sizes& s, CouplingKind kind, bool backward, int64_t limit) {
  const int64_t preferred = limit < kPreferredSmemBytes ? limit : kPreferredSmemBytes;
  const BlockPlan p = make_plan(s, kind, backward, preferred, 1);
  return smem_bytes(p) <= preferred ? p : make_plan(s, kind, backward, limit, static_cast<int>(kMaxState / kStates));
}

// Time segments. With few blocks (small Bt * D at long L) most SMs would idle, so L splits into
// segments of whole chunks, each a block, in three passes: every segment runs from a zero state
// and records its end state and the product of its per-step factors (the recurrence is linear:
// end = factor * start + end_from_zero, per state; rank one: factor alpha * sum_m a^m_t, "none":
// a^m_t per modality); a short sequential pass over the segments turns those into each segment's
// true start; then every segment runs for real from its start. The backward does the same with
// its reverse carry (the same factors). This costs twice the exps, so it is used only where the
// grid is small. A general W would need M x M factors and always runs as one segment.
constexpr int64_t kMinSegmentChunks = 4;
constexpr int64_t kTargetThreadsPerSm = 1024;

inline BlockPlan with_segments(BlockPlan p, int64_t want) {
  if (want < 1) want = 1;
  if (want > p.chunks) want = p.chunks > 0 ? p.chunks : 1;
  p.seg_chunks = (p.chunks + want - 1) / want;
  p.segments = p.seg_chunks > 0 ? (p.chunks + p.seg_chunks - 1) / p.seg_chunks : 1;
  p.blocks = p.Bt * p.row_blocks * p.segments;
  return p;
}

// Segments for a call: `hint` >= 1 asks for that many, 0 lets the grid size decide on a GPU
// with `sms` multiprocessors.
inline int64_t choose_segments(const BlockPlan& p, CouplingKind kind, int64_t hint, int64_t sms) {
  if (kind == CouplingKind::kGeneral) return 1;
  if (hint >= 1) return hint;
  const int64_t threads = p.Bt * p.row_blocks * p.threads, target = sms * kTargetThreadsPerSm;
  if (threads <= 0 || threads >= target) return 1;
  const int64_t want = (target + threads - 1) / threads, most = p.chunks / kMinSegmentChunks;
  return want < most ? want : (most > 1 ? most : 1);
}

// Per-segment values [Bt][segments][D][width] in a workspace: end states (or reverse carries)
// from zero, factors, and the true starts (or incoming carries).
struct SegmentArrays {
  int64_t end = 0, factor = 0, start = 0, size = 0;
};

inline SegmentArrays segment_arrays(const BlockPlan& p, int64_t base) {
  SegmentArrays s;
  const int64_t n = p.segments > 1 ? p.Bt * p.segments * p.D * p.width : 0;
  s.end = base, s.factor = base + n, s.start = base + 2 * n, s.size = 3 * n;
  return s;
}

inline int64_t forward_workspace(const BlockPlan& p) { return segment_arrays(p, 0).size; }

// Backward workspace (floats): dB and dC terms per channel block [2][Bt][row_blocks][M][L][N],
// dA per (batch element, segment) [Bt * segments][M][D][N], dD and d delta_bias likewise
// [2][Bt * segments][M][D], for a general W one M x M partial per thread [blocks][threads][M][M],
// summed per block into [blocks][M][M] and then over blocks (two fixed-order passes that both run
// in parallel), and the segment arrays.
struct Workspace {
  int64_t bc = 0, a = 0, dd = 0, w = 0, w_blocks = 0, total = 0;
  int64_t bc_half = 0;  // offset of the dC half inside the dB/dC part
  SegmentArrays seg;
};

inline Workspace workspace_map(const BlockPlan& p, bool general) {
  Workspace w;
  const int64_t bs = p.Bt * p.segments;
  w.bc_half = p.Bt * p.row_blocks * p.M * p.N * p.L;
  w.bc = 0;
  w.a = w.bc + 2 * w.bc_half;
  w.dd = w.a + bs * p.M * p.D * p.N;
  w.w = w.dd + 2 * bs * p.M * p.D;
  w.w_blocks = w.w + (general ? p.blocks * p.threads * p.M * p.M : 0);
  w.seg = segment_arrays(p, w.w_blocks + (general ? p.blocks * p.M * p.M : 0));
  w.total = w.seg.start + w.seg.size / 3;
  return w;
}

// Steps scanned for sample b: lengths[b] (device memory on the GPU) clamped to [0, L], or L
// without lengths. The Python layer rejects lengths outside [0, L] with a clear error; the CUDA
// entry points cannot check device values on the host without a copy, so the kernels clamp, and
// a bad value from a direct C++ caller never reads or writes out of bounds.
CS_HD int64_t scanned_length(const int64_t* lengths, int64_t b, int64_t L) {
  if (!lengths) return L;
  const int64_t n = lengths[b];
  return n < 0 ? 0 : (n > L ? L : n);
}

// dB / dC from their per-channel-block terms: out[b][m][n][t] = sum over k of in[b][k][m][t][n],
// k ascending; 0 at steps past sample b's length (the blocks write no terms there). `index` runs
// over (b, m, t, n) with n fastest, so neighbouring threads read neighbouring terms.
struct TransposedSum {
  const float* in = nullptr;
  float* out = nullptr;
  int64_t Bt = 0, K = 0, M = 0, N = 0, L = 0;
  const int64_t* lengths = nullptr;
  CS_HD int64_t count() const { return Bt * M * L * N; }
  CS_HD void operator()(int64_t index) const {
    const int64_t n = index % N, t = (index / N) % L, bm = index / (N * L), b = bm / M, m = bm % M;
    float acc = 0.0f;
    if (t < scanned_length(lengths, b, L)) {
      const float* p = in + ((b * K * M + m) * L + t) * N + n;
      for (int64_t k = 0; k < K; ++k) acc += p[k * M * L * N];
    }
    out[(bm * N + n) * L + t] = acc;
  }
};

// out[o][i] = sum over k of in[o][k][i], k ascending: the fixed-order reduction of partials.
CS_HD float sum_leading_at(const float* in, int64_t K, int64_t inner, int64_t index) {
  const int64_t o = index / inner, i = index % inner;
  const float* p = in + o * K * inner + i;
  float acc = 0.0f;
  for (int64_t k = 0; k < K; ++k) acc += p[k * inner];
  return acc;
}

}  // namespace gpu
}  // namespace coupled_scan
