// The steps of a CUDA forward / backward call, written once over a `Launcher` that either
// launches kernels (scan_cuda.cu) or emulates them on the CPU (tests/cpp/test_cuda_blocks.cpp):
// argument checks, the empty cases, the block plan, the block kernel and the fixed-order
// reductions of the backward's partial sums.
//
// A Launcher provides:
//   int64_t smem_budget()                                  bytes of shared memory a block may use
//   Status blocks_forward(args, plan, vector)             one block per plan.blocks
//   Status blocks_backward(args, plan, map, work, vector)
//   Status sum_leading(in, out, K, inner, count)          out[i] = sum_leading_at(in, K, inner, i)
//   Status fill(p, count, value), Status copy(dst, src, count)
#pragma once

#include "block_plan.h"

namespace coupled_scan {
namespace gpu {

inline Status check_sizes(const ForwardArgs<float>& a) {
  const Sizes& s = a.size;
  if (s.batch < 0 || s.channels < 0 || s.length < 0) return Status::kInvalidSize;
  if (s.modalities < 1 || s.modalities > kMaxModalities) return Status::kInvalidSize;
  if (s.state < 1 || s.state > kMaxState) return Status::kInvalidSize;
  if (a.coupling != CouplingKind::kRankOne && a.coupling != CouplingKind::kNone &&
      a.coupling != CouplingKind::kGeneral)
    return Status::kInvalidArgument;
  if (s.batch == 0 || s.channels == 0 || s.length == 0) return Status::kOk;
  if (!a.u.data || !a.delta.data || !a.B.data || !a.C.data || !a.A) return Status::kNullPointer;
  if (a.coupling == CouplingKind::kGeneral && !a.W) return Status::kNullPointer;
  return Status::kOk;
}

inline bool vector_path(CouplingKind k) { return k != CouplingKind::kRankOne; }

template <typename Launcher>
Status forward_driver(const ForwardArgs<float>& a, Launcher& launch) {
  Status st = check_sizes(a);
  if (st != Status::kOk) return st;
  const Sizes& s = a.size;
  const int64_t states = s.batch * s.modalities * s.channels * s.state;
  if (states == 0) return Status::kOk;
  if (s.length == 0) {  // h_{L-1} is the initial state
    if (!a.last_state) return Status::kOk;
    return a.initial_state ? launch.copy(a.last_state, a.initial_state, states)
                           : launch.fill(a.last_state, states, 0.0f);
  }
  const BlockPlan plan = plan_for(s, a.coupling, false, launch.smem_budget());
  if (smem_bytes(plan) > launch.smem_budget()) return Status::kInvalidSize;
  return launch.blocks_forward(a, plan, vector_path(a.coupling));
}

inline int64_t workspace_floats(const Sizes& s, CouplingKind k) {
  if (s.batch == 0 || s.channels == 0 || s.length == 0) return 0;
  return workspace_map(make_plan(s, k, true, 1 << 30), k == CouplingKind::kGeneral).total;
}

template <typename Launcher>
Status backward_driver(const BackwardArgs<float>& g, float* work, Launcher& launch) {
  const ForwardArgs<float>& a = g.fwd;
  Status st = check_sizes(a);
  if (st != Status::kOk) return st;
  const Sizes& s = a.size;
  const int64_t M = s.modalities, D = s.channels, N = s.state, L = s.length;
  const bool general = a.coupling == CouplingKind::kGeneral;
  auto zero = [&](float* p, int64_t n) { return p && n > 0 ? launch.fill(p, n, 0.0f) : Status::kOk; };
  if (s.batch == 0 || D == 0 || L == 0) {
    if ((st = zero(g.dA, M * D * N)) != Status::kOk) return st;
    if ((st = zero(g.dD, M * D)) != Status::kOk) return st;
    if ((st = zero(g.ddelta_bias, M * D)) != Status::kOk) return st;
    if ((st = zero(g.dW, general ? M * M : 0)) != Status::kOk) return st;
    const int64_t states = s.batch * M * D * N;
    if (g.dinitial_state && states > 0)
      return g.dlast_state ? launch.copy(g.dinitial_state, g.dlast_state, states)
                           : launch.fill(g.dinitial_state, states, 0.0f);
    return Status::kOk;
  }
  if (!g.checkpoints || !g.dout.data || !g.du || !g.ddelta || !g.dA || !g.dB || !g.dC || !work)
    return Status::kNullPointer;
  if (a.z.data && !g.dz) return Status::kNullPointer;
  const BlockPlan plan = plan_for(s, a.coupling, true, launch.smem_budget());
  if (smem_bytes(plan) > launch.smem_budget()) return Status::kInvalidSize;
  const Workspace map = workspace_map(plan, general);
  if ((st = launch.blocks_backward(g, plan, map, work, vector_path(a.coupling))) != Status::kOk) return st;

  // Fixed-order sums: dB and dC over channel blocks, the parameters over the batch (and dW over
  // the threads of each block, then over the blocks).
  const int64_t seq = s.batch * M * N * L;
  if ((st = launch.sum_leading(work + map.bc, g.dB, plan.row_blocks, M * N * L, seq)) != Status::kOk) return st;
  if ((st = launch.sum_leading(work + map.bc + map.bc_half, g.dC, plan.row_blocks, M * N * L, seq)) != Status::kOk)
    return st;
  if ((st = launch.sum_leading(work + map.a, g.dA, s.batch, M * D * N, M * D * N)) != Status::kOk) return st;
  if (g.dD && (st = launch.sum_leading(work + map.dd, g.dD, s.batch, M * D, M * D)) != Status::kOk) return st;
  if (g.ddelta_bias &&
      (st = launch.sum_leading(work + map.dd + s.batch * M * D, g.ddelta_bias, s.batch, M * D, M * D)) != Status::kOk)
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
