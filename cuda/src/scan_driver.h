// The steps of a CUDA forward / backward call, written once over a `Launcher` that either
// launches kernels (scan_cuda.cu) or emulates them on the CPU (tests/cpp/test_cuda_blocks.cpp):
// argument checks, the empty cases, the block plan (with time segments where the grid is small),
// the block kernels and the fixed-order reductions of the backward's partial sums.
//
// A Launcher provides:
//   int64_t smem_budget(), int64_t sm_count()   shared memory a block may use; multiprocessors
//   Status blocks_forward(args, plan, vector, pass, segment_arrays, work)   plan.blocks blocks
//   Status blocks_backward(args, plan, vector, pass, workspace_map, work)
//   Status each_index(job)                        job(i) for every i below job.count() (SegmentCarry,
//                                                 TransposedSum)
//   Status sum_leading(in, out, K, inner, count)  out[i] = sum_leading_at(in, K, inner, i)
//   Status fill(p, count, value), Status copy(dst, src, count)
#pragma once

#include "block_plan.h"
#include "check_args.h"
#include "segment_carry.h"

namespace coupled_scan {
namespace gpu {

inline bool vector_path(CouplingKind k) { return k != CouplingKind::kRankOne; }

// The plan of one call: shared memory from the launcher's limit, segments from `hint` (0: auto).
inline BlockPlan call_plan(const Sizes& s, CouplingKind k, bool backward, int64_t smem_limit, int64_t hint,
                           int64_t sms) {
  const BlockPlan p = plan_for(s, k, backward, smem_limit);
  return with_segments(p, choose_segments(p, k, hint, sms));
}

inline bool empty_call(const Sizes& s) { return s.batch == 0 || s.channels == 0 || s.length == 0; }

// A backward without checkpoints first runs the forward into the workspace: its segment arrays
// share the start of the workspace with the backward's (the forward is done before the backward
// starts), the checkpoints follow both.
struct RecomputeMap {
  int64_t checkpoints = 0, total = 0;
};

// The workspace does not depend on the shared-memory plan, only on the shape and the segments.
inline RecomputeMap recompute_map(const Sizes& s, CouplingKind k, int64_t hint, int64_t sms) {
  const int64_t unlimited = int64_t(1) << 30;
  const BlockPlan fwd = call_plan(s, k, false, unlimited, hint, sms);
  const BlockPlan bwd = call_plan(s, k, true, unlimited, hint, sms);
  const int64_t f = forward_workspace(fwd), b = workspace_map(bwd, k == CouplingKind::kGeneral).total;
  RecomputeMap r;
  r.checkpoints = f > b ? f : b;
  r.total = r.checkpoints + s.batch * s.channels * fwd.chunks * fwd.width;
  return r;
}

// Workspace floats a call needs (the segment arrays; in the backward also the partial sums, and
// with `recompute` the checkpoints it recomputes).
inline int64_t workspace_floats(const Sizes& s, CouplingKind k, bool backward, int64_t hint, int64_t sms,
                                bool recompute = false) {
  if (empty_call(s) || s.modalities < 1 || s.modalities > kMaxModalities || s.state < 1 || s.state > kMaxState)
    return 0;
  if (backward && recompute) return recompute_map(s, k, hint, sms).total;
  const BlockPlan p = call_plan(s, k, backward, int64_t(1) << 30, hint, sms);
  return backward ? workspace_map(p, k == CouplingKind::kGeneral).total : forward_workspace(p);
}

template <typename Launcher>
Status forward_driver(const ForwardArgs<float>& a, int64_t segments_hint, float* work, Launcher& launch) {
  Status st = check_forward_args(a);
  if (st != Status::kOk) return st;
  if (reads_step_major(a)) return Status::kInvalidArgument;  // row-major in time only
  const Sizes& s = a.size;
  const int64_t states = s.batch * s.modalities * s.channels * s.state;
  if (states == 0) return Status::kOk;
  if (s.length == 0) {  // h_{L-1} is the initial state
    if (!a.last_state) return Status::kOk;
    return a.initial_state ? launch.copy(a.last_state, a.initial_state, states)
                           : launch.fill(a.last_state, states, 0.0f);
  }
  const BlockPlan plan = call_plan(s, a.coupling, false, launch.smem_budget(), segments_hint, launch.sm_count());
  if (smem_bytes(plan) > launch.smem_budget()) return Status::kInvalidSize;
  const bool vector = vector_path(a.coupling);
  const SegmentArrays segs = segment_arrays(plan, 0);
  if (plan.segments > 1) {
    if (!work) return Status::kNullPointer;
    if ((st = launch.blocks_forward(a, plan, vector, Pass::kSummary, segs, work)) != Status::kOk) return st;
    if ((st = launch.each_index(SegmentCarry{plan, segs, work, a.initial_state, false})) != Status::kOk) return st;
  }
  return launch.blocks_forward(a, plan, vector, Pass::kFull, segs, work);
}

template <typename Launcher>
Status backward_driver(const BackwardArgs<float>& grads, int64_t segments_hint, float* work, Launcher& launch) {
  BackwardArgs<float> g = grads;
  const ForwardArgs<float>& a = g.fwd;
  Status st = check_forward_args(a);
  if (st != Status::kOk) return st;
  if (reads_step_major(a) || g.dout.step_major()) return Status::kInvalidArgument;  // row-major in time only
  const Sizes& s = a.size;
  const int64_t M = s.modalities, D = s.channels, N = s.state, L = s.length;
  const bool general = a.coupling == CouplingKind::kGeneral;
  auto zero = [&](float* p, int64_t n) { return p && n > 0 ? launch.fill(p, n, 0.0f) : Status::kOk; };
  if (s.batch == 0 || D == 0 || L == 0) {  // du, ddelta, dz are empty; dB, dC are not when D = 0
    if ((st = zero(g.dA, M * D * N)) != Status::kOk) return st;
    if ((st = zero(g.dB, s.batch * M * N * L)) != Status::kOk) return st;
    if ((st = zero(g.dC, s.batch * M * N * L)) != Status::kOk) return st;
    if ((st = zero(g.dD, M * D)) != Status::kOk) return st;
    if ((st = zero(g.ddelta_bias, M * D)) != Status::kOk) return st;
    if ((st = zero(g.dW, M * M)) != Status::kOk) return st;
    const int64_t states = s.batch * M * D * N;
    if (g.dinitial_state && states > 0)
      return g.dlast_state ? launch.copy(g.dinitial_state, g.dlast_state, states)
                           : launch.fill(g.dinitial_state, states, 0.0f);
    return Status::kOk;
  }
  if (!g.dout.data || !g.du || !g.ddelta || !g.dA || !g.dB || !g.dC || !work) return Status::kNullPointer;
  if (a.z.data && !g.dz) return Status::kNullPointer;
  const BlockPlan plan = call_plan(s, a.coupling, true, launch.smem_budget(), segments_hint, launch.sm_count());
  if (smem_bytes(plan) > launch.smem_budget()) return Status::kInvalidSize;
  if (!g.checkpoints) {  // not saved by the caller: a forward pass recomputes them into the workspace
    ForwardArgs<float> f = a;
    f.out = nullptr;
    f.last_state = nullptr;
    f.checkpoints = work + recompute_map(s, a.coupling, segments_hint, launch.sm_count()).checkpoints;
    if ((st = forward_driver(f, segments_hint, work, launch)) != Status::kOk) return st;
    g.checkpoints = f.checkpoints;
  }
  const Workspace map = workspace_map(plan, general);
  const bool vector = vector_path(a.coupling);
  if (plan.segments > 1) {
    if ((st = launch.blocks_backward(g, plan, vector, Pass::kSummary, map, work)) != Status::kOk) return st;
    if ((st = launch.each_index(SegmentCarry{plan, map.seg, work, nullptr, true})) != Status::kOk) return st;
  }
  if ((st = launch.blocks_backward(g, plan, vector, Pass::kFull, map, work)) != Status::kOk) return st;

  // Fixed-order sums: dB and dC over channel blocks, the parameters over the batch and the
  // segments (and dW over the threads of each block, then over the blocks).
  const int64_t bs = s.batch * plan.segments;
  for (int q = 0; q < 2; ++q) {
    const TransposedSum job{work + map.bc + q * map.bc_half, q == 0 ? g.dB : g.dC, s.batch, plan.row_blocks, M, N, L,
                            a.lengths};
    if ((st = launch.each_index(job)) != Status::kOk) return st;
  }
  if ((st = launch.sum_leading(work + map.a, g.dA, bs, M * D * N, M * D * N)) != Status::kOk) return st;
  if (g.dD && (st = launch.sum_leading(work + map.dd, g.dD, bs, M * D, M * D)) != Status::kOk) return st;
  if (g.ddelta_bias &&
      (st = launch.sum_leading(work + map.dd + bs * M * D, g.ddelta_bias, bs, M * D, M * D)) != Status::kOk)
    return st;
  if (g.dW) {
    if (general) {
      st = launch.sum_leading(work + map.w, work + map.w_blocks, plan.threads, M * M, plan.blocks * M * M);
      return st != Status::kOk ? st : launch.sum_leading(work + map.w_blocks, g.dW, plan.blocks, M * M, M * M);
    }
    return zero(g.dW, M * M);
  }
  return Status::kOk;
}

}  // namespace gpu
}  // namespace coupled_scan
