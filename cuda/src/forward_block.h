// Forward pass of one thread block (block_plan.h): per 16-step chunk, save the checkpoint, load
// dt and u, then walk time in rounds of `sub` steps, up to the sample's length (its padded steps
// only get their zeros and checkpoints in a last phase). Each thread advances its 8 states (x M on
// the vector path) and leaves per-warp partial sums of y in shared memory; a reduction phase adds
// the G partials, the skip term and the gate and writes `out`.
#pragma once

#include "block_view.h"

namespace coupled_scan {
namespace gpu {

// kVector: "none" and general W carry an M-vector of states per (b, d, n); otherwise the
// rank-one path carries s = sum_m h^m (docs/coupled-scan.md, "Rank-one fast path").
template <typename Tin, bool kVector>
struct ForwardBlock : BlockView<Tin> {
  using View = BlockView<Tin>;
  static constexpr int kMs = kVector ? static_cast<int>(kMaxModalities) : 1;
  struct Thread {
    float h[kMs][kStates];
    float factor[kMs][kStates];  // summary pass: product of the steps' factors
  };
  Pass pass;
  SegmentArrays segs;
  float* work;
  using View::a;
  using View::p;
  using View::b;

  CS_HD ForwardBlock(const ForwardArgs<float>& args, const BlockPlan& plan, Pass which, const SegmentArrays& arrays,
                     float* workspace, int64_t block, float* smem)
      : View(args, plan, block, smem), pass(which), segs(arrays), work(workspace) {}
  CS_HD bool summary() const { return pass == Pass::kSummary; }

  // Phase: the state before the segment: initial_state (or zero) for the first segment, zero in
  // a summary, otherwise the start the segment pass computed.
  CS_HD void init(int tid, Thread& th) const {
    const int64_t d = this->channel(tid);
    const int g = View::group(tid);
    for (int j = 0; j < kStates; ++j) {
      const int n = g * kStates + j;
      const bool live = d < p.D && n < p.N && !summary();
      for (int m = 0; m < kMs; ++m) th.factor[m][j] = 1.0f, th.h[m][j] = 0.0f;
      if (!live) continue;
      if (this->seg > 0) {
        for (int m = 0; m < kMs && m < p.M; ++m)
          th.h[m][j] = work[segs.start + this->segment_index(this->seg, d, m * p.N + n)];
      } else if (a.initial_state) {
        for (int m = 0; m < kMaxModalities && m < p.M; ++m)  // rank one: s = sum_m h^m
          th.h[kVector ? m : 0][j] += a.initial_state[this->state_index(m, d, n)];
      }
    }
  }

  // Phase (summary): the segment's end state and factor.
  CS_HD void finish(int tid, const Thread& th) const {
    const int64_t d = this->channel(tid);
    if (!summary() || d >= p.D) return;
    const int g = View::group(tid);
    for (int j = 0; j < kStates; ++j) {
      const int n = g * kStates + j;
      if (n >= p.N) break;
      for (int m = 0; m < kMs && m < p.M; ++m) {
        const int64_t i = this->segment_index(this->seg, d, m * p.N + n);
        work[segs.end + i] = th.h[m][j];
        work[segs.factor + i] = th.factor[m][j];
      }
    }
  }

  CS_HD void save_checkpoint(int tid, const Thread& th, int64_t c) const {
    const int64_t d = this->channel(tid);
    if (!a.checkpoints || d >= p.D || summary()) return;
    const int width = kVector ? p.M * p.N : p.N;
    float* ck = a.checkpoints + ((b * p.D + d) * p.chunks + c) * width;
    const int g = View::group(tid);
    for (int j = 0; j < kStates; ++j) {
      const int n = g * kStates + j;
      if (n >= p.N) break;
      for (int m = 0; m < kMs && m < p.M; ++m) ck[m * p.N + n] = th.h[m][j];
    }
  }

  // Phase: steps [s0, s1) of chunk c.
  CS_HD void walk(int tid, Thread& th, int64_t c, int s0, int s1) const {
    const int ln = View::lane(tid), g = View::group(tid);
    const int64_t d = this->channel(tid);
    const bool valid = d < p.D;
    for (int s = s0; s < s1; ++s) {
      const int64_t t = this->chunk_start(c) + s;
      const bool last = a.last_state && t == this->len - 1 && !summary();
      float y[kMaxModalities];
      for (int m = 0; m < kMaxModalities; ++m) y[m] = 0.0f;
      for (int j = 0; j < kStates && valid; ++j) {
        const int n = g * kStates + j;
        if (n >= p.N) break;
        float prev[kMs] = {};  // only the first M are read
        for (int m = 0; m < kMs && m < p.M; ++m) prev[m] = th.h[m][j];
        float next_sum = 0.0f, a_sum = 0.0f;
        const bool track = summary();  // only a summary needs the segment's factor
        for (int m = 0; m < kMaxModalities && m < p.M; ++m) {
          float coupled;  // g^m_t = sum_i W[m, i] h^i_{t-1}
          if (kVector) {
            coupled = 0.0f;
            for (int i = 0; i < kMs && i < p.M; ++i) coupled += this->W(m, i) * prev[i];
          } else {
            coupled = a.alpha * prev[0];
          }
          const float dtv = this->dt(m, s, ln);
          const float av = scan_exp(dtv * this->A(m, d, n));
          const float hv = av * coupled + dtv * this->u(m, s, ln) * this->seq(a.B, m, n, t);
          if (!summary()) y[m] += this->seq(a.C, m, n, t) * hv;  // a summary needs no y
          if (kVector) th.h[kVector ? m : 0][j] = hv;
          if (kVector && track) th.factor[kVector ? m : 0][j] *= av;  // "none": h^m_t = a^m_t h^m_{t-1} + ...
          next_sum += hv;
          a_sum += av;
          if (last) a.last_state[this->state_index(m, d, n)] = hv;
        }
        if (!kVector) th.h[0][j] = next_sum;
        if (!kVector && track) th.factor[0][j] *= a.alpha * a_sum;  // s_t = alpha (sum_m a^m_t) s_{t-1} + ...
      }
      for (int m = 0; m < p.M && !summary(); ++m) this->part(s - s0, m, g, ln) = y[m];
    }
  }

  // Phase (after the walk, full pass only): what the padded steps of the segment need. `out` is
  // 0 there; checkpoints of chunks that start at or past the sample's length hold its final state
  // (the state this segment ends or, past the length, starts with); a sample of length 0 ends in
  // its initial state, which the first segment copies (per modality: the rank-one path carries
  // only the sum).
  CS_HD void pad(int tid, const Thread& th) const {
    if (summary()) return;
    this->zero_padded(tid, a.out);
    const int64_t scanned = this->scan_end();
    for (int64_t c = scanned > this->c_begin ? scanned : this->c_begin; c < this->c_end; ++c)
      save_checkpoint(tid, th, c);
    const int64_t d = this->channel(tid);
    if (this->len > 0 || this->seg > 0 || !a.last_state || d >= p.D) return;
    const int g = View::group(tid);
    for (int j = 0; j < kStates; ++j) {
      const int n = g * kStates + j;
      if (n >= p.N) break;
      for (int m = 0; m < p.M; ++m) {
        const int64_t i = this->state_index(m, d, n);
        a.last_state[i] = a.initial_state ? a.initial_state[i] : 0.0f;
      }
    }
  }

  // Phase: out for steps [s0, s1) of chunk c. Time varies fastest across threads, so that
  // neighbouring threads write neighbouring elements of out (and read neighbouring z).
  CS_HD void reduce(int tid, int64_t c, int s0, int s1) const {
    const int steps = s1 - s0, count = steps * p.M * kRows;
    for (int i = tid; i < count; i += p.threads) {
      const int ss = i % steps, ln = (i / steps) % kRows, m = i / (steps * kRows);
      const int64_t d = this->d0 + ln;
      if (d >= p.D) continue;
      const int s = s0 + ss;
      const int64_t t = this->chunk_start(c) + s;
      float y = 0.0f;
      for (int g = 0; g < p.G; ++g) y += this->part(ss, m, g, ln);
      if (a.D) y += a.D[m * p.D + d] * this->u(m, s, ln);
      if (a.z.data) y *= silu(this->seq(a.z, m, d, t));
      if (a.out) a.out[this->seq_index(m, d, t)] = y;
    }
  }
};

// The forward as a sequence of phases; `ex` runs each phase on every thread, then synchronises.
template <typename Block, typename Exec>
CS_HD void run_forward_block(const Block& blk, Exec& ex) {
  using Thread = typename Block::Thread;
  // The last segment's summary is never used (nothing comes after it).
  if (blk.summary() && blk.seg == blk.p.segments - 1) return;
  ex.each([&](int tid, Thread& th) { blk.init(tid, th); });
  // Chunks past the sample's length are not walked (no exps spent on padding).
  for (int64_t c = blk.c_begin; c < blk.scan_end(); ++c) {
    ex.each([&](int tid, Thread& th) {
      blk.save_checkpoint(tid, th, c);
      blk.load_chunk(tid, c);
    });
    const int len = blk.chunk_length(c);
    for (int s0 = 0; s0 < len; s0 += blk.p.sub) {
      const int s1 = s0 + blk.p.sub < len ? s0 + blk.p.sub : len;
      ex.each([&](int tid, Thread& th) { blk.walk(tid, th, c, s0, s1); });
      if (!blk.summary()) ex.each([&](int tid, Thread&) { blk.reduce(tid, c, s0, s1); });
    }
  }
  if (blk.summary()) {
    ex.each([&](int tid, Thread& th) { blk.finish(tid, th); });
  } else if (blk.pad_begin() < blk.seg_end() || blk.len == 0) {  // padded steps, or a length of 0
    ex.each([&](int tid, Thread& th) { blk.pad(tid, th); });
  }
}

}  // namespace gpu
}  // namespace coupled_scan
