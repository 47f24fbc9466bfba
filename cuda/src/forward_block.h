// Forward pass of one thread block (block_plan.h): per 16-step chunk, save the checkpoint, load
// dt and u, then walk time in rounds of `sub` steps. Each thread advances its 8 states (x M on
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
  };
  using View::View;
  using View::a;
  using View::p;
  using View::b;

  CS_HD void init(int tid, Thread& th) const {
    const int64_t d = this->channel(tid);
    const int g = View::group(tid);
    for (int j = 0; j < kStates; ++j) {
      const int n = g * kStates + j;
      const bool live = a.initial_state && d < p.D && n < p.N;
      float sum = 0.0f;
      for (int m = 0; m < kMaxModalities && m < p.M; ++m) {
        const float v = live ? a.initial_state[this->state_index(m, d, n)] : 0.0f;
        if (kVector) th.h[kVector ? m : 0][j] = v;
        sum += v;
      }
      if (!kVector) th.h[0][j] = sum;
    }
  }

  CS_HD void save_checkpoint(int tid, const Thread& th, int64_t c) const {
    const int64_t d = this->channel(tid);
    if (!a.checkpoints || d >= p.D) return;
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
      const bool last = a.last_state && t == p.L - 1;
      float y[kMaxModalities];
      for (int m = 0; m < kMaxModalities; ++m) y[m] = 0.0f;
      for (int j = 0; j < kStates && valid; ++j) {
        const int n = g * kStates + j;
        if (n >= p.N) break;
        float prev[kMs];
        for (int m = 0; m < kMs && m < p.M; ++m) prev[m] = th.h[m][j];
        float next_sum = 0.0f;
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
          y[m] += this->seq(a.C, m, n, t) * hv;
          if (kVector) th.h[kVector ? m : 0][j] = hv;
          next_sum += hv;
          if (last) a.last_state[this->state_index(m, d, n)] = hv;
        }
        if (!kVector) th.h[0][j] = next_sum;
      }
      for (int m = 0; m < p.M; ++m) this->part(s - s0, m, g, ln) = y[m];
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
  ex.each([&](int tid, Thread& th) { blk.init(tid, th); });
  for (int64_t c = 0; c < blk.p.chunks; ++c) {
    ex.each([&](int tid, Thread& th) {
      blk.save_checkpoint(tid, th, c);
      blk.load_chunk(tid, c);
    });
    const int len = blk.chunk_length(c);
    for (int s0 = 0; s0 < len; s0 += blk.p.sub) {
      const int s1 = s0 + blk.p.sub < len ? s0 + blk.p.sub : len;
      ex.each([&](int tid, Thread& th) { blk.walk(tid, th, c, s0, s1); });
      ex.each([&](int tid, Thread&) { blk.reduce(tid, c, s0, s1); });
    }
  }
}

}  // namespace gpu
}  // namespace coupled_scan
