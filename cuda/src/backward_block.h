// Backward pass of one thread block (block_plan.h). Chunks run last to first, from the last one
// that holds a step of the sample's length (padded steps only get their zeros). For each chunk:
// restart from its checkpoint and recompute the states (kept per thread, one chunk long) and y
// (for dy and dz); then walk the chunk backwards one (step, modality) at a time with the reverse
// recurrence of docs/coupled-scan.md. Sums over n (du, d dt) cross the warps, sums over the
// block's channels (dB, dC) cross the lanes, both through shared memory in a fixed order (the
// dB / dC terms in plan.tiles rounds of state groups where shared memory is short); what crosses
// blocks goes to the workspace, reduced afterwards by sum_leading_at.
#pragma once

#include "block_view.h"

namespace coupled_scan {
namespace gpu {

template <typename Tin, bool kVector>
struct BackwardBlock : BlockView<Tin> {
  using View = BlockView<Tin>;
  static constexpr int kMs = kVector ? static_cast<int>(kMaxModalities) : 1;
  static constexpr int kMM = kVector ? static_cast<int>(kMaxModalities * kMaxModalities) : 1;
  static constexpr int kChunk = static_cast<int>(kVector ? kCudaChunkVector : kCudaChunkRankOne);
  struct Thread {
    float h[kMs][kStates];                   // running state of the recomputation
    float hist[kChunk][kMs][kStates];        // state before each step of the chunk
    float carry[kMs][kStates];               // rank one: rho_{t+1}; vector: mu^m_{t+1}
    float next[kMs][kStates];                // the same for step t, built modality by modality
    float dA[kMaxModalities][kStates];
    float dW[kMM];
    float factor[kMs][kStates];  // summary pass: product of the steps' factors
    float a_sum[kStates];        // rank one: sum_m a^m_t of the current step
    float terms[2][kStates];     // dB / dC terms of the step, kept for a later tile's sum
  };

  BackwardArgs<float> g;
  Workspace ws;
  float* work = nullptr;
  Pass pass;

  CS_HD BackwardBlock(const BackwardArgs<float>& grads, const BlockPlan& plan, Pass which, const Workspace& map,
                      float* workspace, int64_t block, float* smem)
      : View(grads.fwd, plan, block, smem), g(grads), ws(map), work(workspace), pass(which) {}
  using View::a;
  using View::p;
  using View::b;
  CS_HD bool summary() const { return pass == Pass::kSummary; }
  // Index of this block's (batch element, segment) among the partial sums.
  CS_HD int64_t bs() const { return b * p.segments + this->seg; }

  // dB / dC term q of state n (of the tile being summed) and lane ln.
  CS_HD float& red(int q, int n, int ln) const {
    return this->sm[p.off_red + (q * p.tile_states() + n % p.tile_states()) * kPad + ln];
  }
  CS_HD int tile_of(int grp) const { return grp / p.tile_groups; }
  CS_HD float& nsum(int q, int grp, int ln) const { return this->sm[p.off_nsum + (q * p.G + grp) * kPad + ln]; }
  CS_HD float& acc(int q, int m, int ln) const { return this->sm[p.off_acc + (q * p.M + m) * kPad + ln]; }

  // Phase: zero accumulators; the carry from later steps: zero for the last segment and in a
  // summary, otherwise what the segment pass computed.
  CS_HD void init(int tid, Thread& th) const {
    const int64_t d = this->channel(tid);
    const int grp = View::group(tid);
    const bool from_later = !summary() && this->seg < p.segments - 1 && d < p.D;
    for (int m = 0; m < kMs; ++m)
      for (int j = 0; j < kStates; ++j) {
        const int n = grp * kStates + j;
        th.carry[m][j] = (from_later && n < p.N && m < p.M)
                             ? work[ws.seg.start + this->segment_index(this->seg, d, m * p.N + n)]
                             : 0.0f;
        th.next[m][j] = 0.0f;
        th.factor[m][j] = 1.0f;
      }
    for (int j = 0; j < kStates; ++j) th.a_sum[j] = 0.0f;
    for (int m = 0; m < kMaxModalities; ++m)
      for (int j = 0; j < kStates; ++j) th.dA[m][j] = 0.0f;
    for (int k = 0; k < kMM; ++k) th.dW[k] = 0.0f;
    for (int i = tid; i < 2 * p.M * kPad; i += p.threads) this->sm[p.off_acc + i] = 0.0f;
  }

  // Phase: states at the start of chunk c, and its dt and u.
  CS_HD void restart(int tid, Thread& th, int64_t c) const {
    const int64_t d = this->channel(tid);
    const int grp = View::group(tid);
    const int width = kVector ? p.M * p.N : p.N;
    for (int j = 0; j < kStates; ++j) {
      const int n = grp * kStates + j;
      for (int m = 0; m < kMs; ++m)
        th.h[m][j] = (d < p.D && n < p.N && m < p.M && !summary())
                         ? g.checkpoints[((b * p.D + d) * p.chunks + c) * width + m * p.N + n]
                         : 0.0f;
    }
    this->load_chunk(tid, c);
  }

  // Phase: recompute steps [s0, s1) of chunk c, keeping the states and y's partial sums.
  CS_HD void recompute(int tid, Thread& th, int64_t c, int s0, int s1) const {
    const int ln = View::lane(tid), grp = View::group(tid);
    const int64_t d = this->channel(tid);
    const bool valid = d < p.D;
    for (int s = s0; s < s1; ++s) {
      const int64_t t = this->chunk_start(c) + s;
      float y[kMaxModalities];
      for (int m = 0; m < kMaxModalities; ++m) y[m] = 0.0f;
      for (int j = 0; j < kStates; ++j) {
        for (int m = 0; m < kMs; ++m) th.hist[s][m][j] = th.h[m][j];
        const int n = grp * kStates + j;
        if (!valid || n >= p.N) continue;
        float next_sum = 0.0f;
        for (int m = 0; m < kMaxModalities && m < p.M; ++m) {
          const float coupled = coupled_state(th.hist[s], m, j);
          const float dtv = this->dt(m, s, ln);
          const float hv = scan_exp(dtv * this->A(m, d, n)) * coupled + dtv * this->u(m, s, ln) * this->seq(a.B, m, n, t);
          y[m] += this->seq(a.C, m, n, t) * hv;
          if (kVector) th.h[kVector ? m : 0][j] = hv;
          next_sum += hv;
        }
        if (!kVector) th.h[0][j] = next_sum;
      }
      for (int m = 0; m < p.M; ++m) this->part(s - s0, m, grp, ln) = y[m];
    }
  }

  // g^m = sum_i W[m, i] h^i from the states before a step (rank one: alpha * s).
  CS_HD float coupled_state(const float (&before)[kMs][kStates], int m, int j) const {
    if (!kVector) return a.alpha * before[0][j];
    float v = 0.0f;
    for (int i = 0; i < kMs && i < p.M; ++i) v += this->W(m, i) * before[i][j];
    return v;
  }

  // Phase: y for steps [s0, s1); dy into shared memory, dz out, dD accumulated. Thread i owns
  // (m, lane) pairs, so each accumulator has one writer and a fixed order.
  CS_HD void output_grads(int tid, int64_t c, int s0, int s1) const {
    for (int i = tid; i < p.M * kRows; i += p.threads) {
      const int ln = i % kRows, m = i / kRows;
      const int64_t d = this->d0 + ln;
      for (int s = s0; s < s1; ++s) {
        float dyv = 0.0f;
        if (d < p.D) {
          const int64_t t = this->chunk_start(c) + s;
          float y = 0.0f;  // only dz needs it; a summary has not recomputed it
          for (int grp = 0; grp < p.G && !summary(); ++grp) y += this->part(s - s0, m, grp, ln);
          const float uv = this->u(m, s, ln);
          if (a.D) y += a.D[m * p.D + d] * uv;
          const float dout = this->seq(g.dout, m, d, t);
          dyv = dout;
          if (a.z.data) {
            const float zv = this->seq(a.z, m, d, t);
            dyv = dout * silu(zv);
            if (!summary()) g.dz[this->seq_index(m, d, t)] = dout * y * silu_grad(zv);
          }
          if (!summary()) acc(0, m, ln) += dyv * uv;
        }
        this->dy(m, s, ln) = dyv;
      }
    }
  }

  // Phase: the reverse step of modality m at step s of chunk c.
  CS_HD void reverse(int tid, Thread& th, int64_t c, int s, int m) const {
    const int ln = View::lane(tid), grp = View::group(tid);
    const int64_t d = this->channel(tid);
    const bool valid = d < p.D;
    const int64_t t = this->chunk_start(c) + s;
    const float dtv = this->dt(m, s, ln), uv = this->u(m, s, ln), dyv = this->dy(m, s, ln);
    float su = 0.0f, sdt = 0.0f;
    for (int j = 0; j < kStates; ++j) {
      const int n = grp * kStates + j;
      if (n >= p.N) break;
      th.terms[0][j] = th.terms[1][j] = 0.0f;  // every lane's term enters the sum over channels
      if (!valid) continue;
      float after;  // sum_k W[k, m] mu^k_{t+1}
      if (kVector) {
        after = 0.0f;
        for (int k = 0; k < kMs && k < p.M; ++k) after += this->W(k, m) * th.carry[k][j];
      } else {
        after = a.alpha * th.carry[0][j];
      }
      float lam = dyv * this->seq(a.C, m, n, t) + after;
      if (g.dlast_state && t == this->len - 1) lam += g.dlast_state[this->state_index(m, d, n)];
      const float Av = this->A(m, d, n);
      const float av = scan_exp(dtv * Av);
      const float mu = av * lam;
      if (!summary()) {  // a summary needs only the carry and the factor: no states, no gradients
        const float coupled = coupled_state(th.hist[s], m, j);
        const float Bv = this->seq(a.B, m, n, t);
        const float hv = av * coupled + dtv * uv * Bv;
        th.terms[0][j] = lam * dtv * uv;  // dB term
        th.terms[1][j] = dyv * hv;        // dC term
        su += lam * Bv;
        sdt += lam * (Bv * uv + av * coupled * Av);
        th.dA[m][j] += mu * coupled * dtv;
        if (kVector && a.coupling == CouplingKind::kGeneral)
          for (int i = 0; i < kMs && i < p.M; ++i) th.dW[kVector ? m * p.M + i : 0] += mu * th.hist[s][i][j];
      }
      if (kVector) {
        th.next[kVector ? m : 0][j] = mu;
        if (summary()) th.factor[kVector ? m : 0][j] *= av;  // "none": mu^m_t = a^m_t (... + mu^m_{t+1})
      } else {
        th.next[0][j] = (m == 0 ? 0.0f : th.next[0][j]) + mu;
        if (summary()) {  // rho_t = alpha sum_m a^m_t rho_{t+1} + ...
          th.a_sum[j] = (m == 0 ? 0.0f : th.a_sum[j]) + av;
          if (m == p.M - 1) th.factor[0][j] *= a.alpha * th.a_sum[j];
        }
      }
    }
    nsum(0, grp, ln) = su;
    nsum(1, grp, ln) = sdt;
    if (!summary() && tile_of(grp) == 0) write_terms(tid, th, 0);
    if (m != p.M - 1) return;
    for (int k = 0; k < kMs; ++k)
      for (int j = 0; j < kStates; ++j) th.carry[k][j] = th.next[k][j];
    if (t == 0 && g.dinitial_state && valid && !summary()) {
      for (int j = 0; j < kStates; ++j) {
        const int n = grp * kStates + j;
        if (n >= p.N) break;
        for (int i = 0; i < p.M; ++i) {  // d h^i_{-1} = sum_k W[k, i] mu^k_0
          float v;
          if (kVector) {
            v = 0.0f;
            for (int k = 0; k < kMs && k < p.M; ++k) v += this->W(k, i) * th.carry[k][j];
          } else {
            v = a.alpha * th.carry[0][j];
          }
          g.dinitial_state[this->state_index(i, d, n)] = v;
        }
      }
    }
  }

  // Phase (tile k > 0 of a reverse step; tile 0 is written by `reverse`): this thread's dB / dC
  // terms into shared memory when its state group is in tile k.
  CS_HD void write_terms(int tid, const Thread& th, int k) const {
    const int ln = View::lane(tid), grp = View::group(tid);
    if (tile_of(grp) != k) return;
    for (int j = 0; j < kStates; ++j) {
      const int n = grp * kStates + j;
      if (n >= p.N) break;
      red(0, n, ln) = th.terms[0][j];
      red(1, n, ln) = th.terms[1][j];
    }
  }

  // Phase: the sums of the reverse step (s, m) for tile k of the state groups: dB and dC over
  // the block's channels (to the workspace); with tile 0 also du and d delta over the groups.
  CS_HD void reverse_sums(int tid, int64_t c, int s, int m, int k) const {
    const int64_t t = this->chunk_start(c) + s;
    const int n0 = k * p.tile_states(), n1 = n0 + p.tile_states() < p.N ? n0 + p.tile_states() : p.N;
    const int tn = n1 - n0, lanes = k == 0 ? kRows : 0;
    for (int i = tid; i < 2 * tn + lanes; i += p.threads) {
      if (i < 2 * tn) {
        const int q = i / tn, n = n0 + i % tn;
        float v = 0.0f;
        for (int ln = 0; ln < kRows; ++ln) v += red(q, n, ln);
        // [..][t][n]: this phase's N values are contiguous (the reduction transposes them back)
        work[ws.bc + q * ws.bc_half + (((b * p.row_blocks + this->x) * p.M + m) * p.L + t) * p.N + n] = v;
        continue;
      }
      const int ln = i - 2 * tn;
      const int64_t d = this->d0 + ln;
      if (d >= p.D) continue;
      float su = 0.0f, sdt = 0.0f;
      for (int grp = 0; grp < p.G; ++grp) su += nsum(0, grp, ln), sdt += nsum(1, grp, ln);
      const float dtv = this->dt(m, s, ln);
      float du = dtv * su;
      if (a.D) du += this->dy(m, s, ln) * a.D[m * p.D + d];
      const float ddelta = a.delta_softplus ? sdt * scan_sigmoid(this->pre_dt(m, d, t)) : sdt;
      g.du[this->seq_index(m, d, t)] = du;
      g.ddelta[this->seq_index(m, d, t)] = ddelta;
      acc(1, m, ln) += ddelta;
    }
  }

  // Phase (full pass): du, d delta and dz are 0 at the segment's padded steps (dB and dC there
  // come out 0 from TransposedSum); for a sample of length 0, d initial_state = d last_state (or
  // 0), written by the first segment.
  CS_HD void pad(int tid) const {
    if (summary()) return;
    this->zero_padded(tid, g.du);
    this->zero_padded(tid, g.ddelta);
    if (a.z.data) this->zero_padded(tid, g.dz);
    const int64_t d = this->channel(tid);
    if (this->len > 0 || this->seg > 0 || !g.dinitial_state || d >= p.D) return;
    const int grp = View::group(tid);
    for (int j = 0; j < kStates; ++j) {
      const int n = grp * kStates + j;
      if (n >= p.N) break;
      for (int m = 0; m < p.M; ++m) {
        const int64_t i = this->state_index(m, d, n);
        g.dinitial_state[i] = g.dlast_state ? g.dlast_state[i] : 0.0f;
      }
    }
  }

  // Phase: per-thread and per-block partials to the workspace; in a summary, the carry at the
  // segment's first step and the segment's factor.
  CS_HD void finish(int tid, const Thread& th) const {
    const int64_t d = this->channel(tid);
    const int grp = View::group(tid);
    if (summary()) {
      if (d >= p.D) return;
      for (int j = 0; j < kStates; ++j) {
        const int n = grp * kStates + j;
        if (n >= p.N) break;
        for (int m = 0; m < kMs && m < p.M; ++m) {
          const int64_t i = this->segment_index(this->seg, d, m * p.N + n);
          work[ws.seg.end + i] = th.carry[m][j];
          work[ws.seg.factor + i] = th.factor[m][j];
        }
      }
      return;
    }
    if (d < p.D)
      for (int j = 0; j < kStates; ++j) {
        const int n = grp * kStates + j;
        if (n >= p.N) break;
        for (int m = 0; m < p.M; ++m) work[ws.a + ((bs() * p.M + m) * p.D + d) * p.N + n] = th.dA[m][j];
      }
    if (kVector && a.coupling == CouplingKind::kGeneral) {
      const int64_t block = (b * p.row_blocks + this->x) * p.segments + this->seg;
      float* w = work + ws.w + (block * p.threads + tid) * p.M * p.M;
      for (int k = 0; k < p.M * p.M; ++k) w[k] = th.dW[kVector ? k : 0];
    }
    for (int i = tid; i < 2 * p.M * kRows; i += p.threads) {
      const int ln = i % kRows, m = (i / kRows) % p.M, q = i / (kRows * p.M);
      const int64_t dd = this->d0 + ln;
      if (dd < p.D) work[ws.dd + ((q * p.Bt * p.segments + bs()) * p.M + m) * p.D + dd] = acc(q, m, ln);
    }
  }
};

template <typename Block, typename Exec>
CS_HD void run_backward_block(const Block& blk, Exec& ex) {
  using Thread = typename Block::Thread;
  // The first segment's summary is never used (nothing comes before it).
  if (blk.summary() && blk.seg == 0) return;
  ex.each([&](int tid, Thread& th) { blk.init(tid, th); });
  // Chunks past the sample's length are not walked (no exps spent on padding).
  for (int64_t c = blk.scan_end() - 1; c >= blk.c_begin; --c) {
    ex.each([&](int tid, Thread& th) { blk.restart(tid, th, c); });
    const int len = blk.chunk_length(c);
    for (int s0 = 0; s0 < len; s0 += blk.p.sub) {
      const int s1 = s0 + blk.p.sub < len ? s0 + blk.p.sub : len;
      // A summary's carry depends on dy = dout * silu(z), dt, A and C only: no recomputation.
      if (!blk.summary()) ex.each([&](int tid, Thread& th) { blk.recompute(tid, th, c, s0, s1); });
      ex.each([&](int tid, Thread&) { blk.output_grads(tid, c, s0, s1); });
    }
    for (int s = len - 1; s >= 0; --s)
      for (int m = 0; m < blk.p.M; ++m) {
        ex.each([&](int tid, Thread& th) { blk.reverse(tid, th, c, s, m); });
        if (blk.summary()) continue;
        ex.each([&](int tid, Thread&) { blk.reverse_sums(tid, c, s, m, 0); });
        for (int k = 1; k < blk.p.tiles; ++k) {
          ex.each([&](int tid, Thread& th) { blk.write_terms(tid, th, k); });
          ex.each([&](int tid, Thread&) { blk.reverse_sums(tid, c, s, m, k); });
        }
      }
  }
  ex.each([&](int tid, Thread& th) {
    blk.pad(tid);
    blk.finish(tid, th);
  });
}

}  // namespace gpu
}  // namespace coupled_scan
