// What a thread block of the CUDA kernels sees: its batch element and channels, typed reads of
// the sequence tensors, the shared arrays of block_plan.h, and the chunk loader that both passes
// share (dt = softplus(delta + bias) and u for one chunk x M modalities x 32 channels, read with
// time fastest so that neighbouring threads read neighbouring addresses).
#pragma once

#include <cstdint>

#include "block_exec.h"
#include "block_plan.h"
#include "coupled_scan/coupled_scan.h"
#include "coupled_scan/math.h"

namespace coupled_scan {
namespace gpu {

// A block's pass over its segment: the real one, or (time segments only, see block_plan.h) a
// summary from a zero state that records the segment's end state and factor.
enum class Pass : int { kFull = 0, kSummary = 1 };

template <typename Tin>
struct BlockView {
  ForwardArgs<float> a;
  BlockPlan p;
  int64_t b = 0;    // batch element
  int64_t d0 = 0;   // first channel
  int64_t x = 0;    // channel block index (d0 / 32)
  int64_t seg = 0;  // time segment
  int64_t c_begin = 0, c_end = 0;  // its chunks
  int64_t len = 0;  // steps scanned (scanned_length); steps from `len` on are padding, never read
  float* sm = nullptr;

  // block = (b * row_blocks + x) * segments + seg
  CS_HD BlockView(const ForwardArgs<float>& args, const BlockPlan& plan, int64_t block, float* smem)
      : a(args), p(plan), b(block / (plan.row_blocks * plan.segments)),
        d0(((block / plan.segments) % plan.row_blocks) * kRows), x((block / plan.segments) % plan.row_blocks),
        seg(block % plan.segments), c_begin(seg * plan.seg_chunks),
        c_end(c_begin + plan.seg_chunks < plan.chunks ? c_begin + plan.seg_chunks : plan.chunks),
        len(scanned_length(args.lengths, block / (plan.row_blocks * plan.segments), plan.L)), sm(smem) {}

  // Where (b, this segment, d, carried value w) lives in a SegmentArrays array.
  CS_HD int64_t segment_index(int64_t s, int64_t d, int w) const {
    return ((b * p.segments + s) * p.D + d) * p.width + w;
  }

  // Thread -> (lane, channel, warp = state group).
  CS_HD static int lane(int tid) { return tid % kRows; }
  CS_HD static int group(int tid) { return tid / kRows; }
  CS_HD int64_t channel(int tid) const { return d0 + lane(tid); }
  CS_HD bool row_valid(int tid) const { return channel(tid) < p.D; }

  // Element t of row r of a (Bt, M, R, L) sequence tensor of the input dtype.
  CS_HD float seq(const SeqTensor<const float>& s, int m, int64_t r, int64_t t) const {
    const Tin* base = reinterpret_cast<const Tin*>(s.data);
    return SeqLoad<Tin>::at(base + b * s.stride_batch + m * s.stride_modality + r * s.stride_row + t);
  }
  CS_HD float A(int m, int64_t d, int n) const { return a.A[(m * p.D + d) * p.N + n]; }
  CS_HD int64_t state_index(int m, int64_t d, int n) const { return ((b * p.M + m) * p.D + d) * p.N + n; }
  CS_HD int64_t seq_index(int m, int64_t d, int64_t t) const { return ((b * p.M + m) * p.D + d) * p.L + t; }
  // Coupling weight W[m, i] of the vector path (identity for "none").
  CS_HD float W(int m, int i) const {
    return a.coupling == CouplingKind::kGeneral ? a.W[m * p.M + i] : (m == i ? 1.0f : 0.0f);
  }
  CS_HD float pre_dt(int m, int64_t d, int64_t t) const {
    return seq(a.delta, m, d, t) + (a.delta_bias ? a.delta_bias[m * p.D + d] : 0.0f);
  }

  // Shared arrays.
  CS_HD float& dt(int m, int s, int ln) const { return sm[p.off_dt + (m * p.chunk + s) * kPad + ln]; }
  CS_HD float& u(int m, int s, int ln) const { return sm[p.off_u + (m * p.chunk + s) * kPad + ln]; }
  CS_HD float& dy(int m, int s, int ln) const { return sm[p.off_dy + (m * p.chunk + s) * kPad + ln]; }
  CS_HD float& part(int ss, int m, int g, int ln) const {
    return sm[p.off_part + ((ss * p.M + m) * p.G + g) * kPad + ln];
  }

  CS_HD int64_t chunk_start(int64_t c) const { return c * p.chunk; }
  // Scanned steps of chunk c (>= 1 for the chunks below scan_end()).
  CS_HD int chunk_length(int64_t c) const {
    const int64_t left = len - c * p.chunk;
    return static_cast<int>(left < p.chunk ? left : p.chunk);
  }
  // The segment's chunks that hold scanned steps are [c_begin, scan_end()); the rest hold padding.
  CS_HD int64_t scan_end() const {
    const int64_t scanned = (len + p.chunk - 1) / p.chunk;
    return scanned < c_end ? scanned : c_end;
  }
  // The segment's padded steps: [pad_begin(), seg_end()).
  CS_HD int64_t seg_end() const { return c_end * p.chunk < p.L ? c_end * p.chunk : p.L; }
  CS_HD int64_t pad_begin() const {
    const int64_t t0 = c_begin * p.chunk;
    return len > t0 ? (len < seg_end() ? len : seg_end()) : t0;
  }

  // Phase helper: value 0 into element t of every (m, channel) row of this block of a (Bt, M, D, L)
  // output, for t in [pad_begin(), seg_end()); time varies fastest across threads.
  CS_HD void zero_padded(int tid, float* dst) const {
    const int64_t t0 = pad_begin(), steps = seg_end() - t0;
    if (!dst || steps <= 0) return;
    for (int64_t i = tid; i < steps * p.M * kRows; i += p.threads) {
      const int64_t ss = i % steps, ln = (i / steps) % kRows, m = i / (steps * kRows);
      const int64_t d = d0 + ln;
      if (d < p.D) dst[seq_index(static_cast<int>(m), d, t0 + ss)] = 0.0f;
    }
  }

  // Phase: dt and u of chunk c into shared memory (zeros past the sample's length and for absent
  // channels).
  CS_HD void load_chunk(int tid, int64_t c) const {
    const int64_t t0 = chunk_start(c);
    const int len = chunk_length(c);
    for (int i = tid; i < p.M * kRows * p.chunk; i += p.threads) {
      const int s = i % p.chunk, ln = (i / p.chunk) % kRows, m = i / (p.chunk * kRows);
      const int64_t d = d0 + ln;
      float dtv = 0.0f, uv = 0.0f;
      if (s < len && d < p.D) {
        const float pre = pre_dt(m, d, t0 + s);
        dtv = a.delta_softplus ? scan_softplus(pre) : pre;
        uv = seq(a.u, m, d, t0 + s);
      }
      dt(m, s, ln) = dtv;
      u(m, s, ln) = uv;
    }
  }
};

}  // namespace gpu
}  // namespace coupled_scan
