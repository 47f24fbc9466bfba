// The CUDA kernels' block code (cuda/src/*_block.h) and call driver (scan_driver.h), run on the
// CPU by an emulating launcher, against the naive transcription of the spec. The GPU runs the
// same phases with __syncthreads between them; this test checks their arithmetic, indexing,
// shared-memory layout, workspace map and fixed-order reductions without a GPU. Shared memory,
// thread registers, outputs and the workspace start as NaN, so an unwritten element fails.
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "backward_block.h"
#include "forward_block.h"
#include "scan_driver.h"
#include "test_support.h"

using namespace coupled_scan;
using namespace coupled_scan::gpu;

namespace {

const float kNaN = std::numeric_limits<float>::quiet_NaN();

template <typename Exec>
void poison(Exec& ex) {
  for (auto& th : ex.threads) {
    float* f = reinterpret_cast<float*>(&th);
    for (size_t i = 0; i < sizeof(th) / sizeof(float); ++i) f[i] = kNaN;
  }
}

int g_shared_conflicts = 0;

// Stricter than HostExec, for finding races: within a phase every thread sees shared memory as
// it was when the phase started (its own writes only), as if all threads ran at once; the writes
// are merged afterwards. A thread that reads what another writes in the same phase (a missing
// barrier on a GPU) then sees a stale or NaN value and the comparison with the reference fails;
// two threads writing one word in a phase count as conflicts. Threads run last to first.
template <typename Thread>
struct SnapshotExec {
  std::vector<Thread> threads;
  float* sm;
  size_t words;
  SnapshotExec(int n, float* smem, size_t count) : threads(static_cast<size_t>(n)), sm(smem), words(count) {}
  template <typename Phase>
  void each(Phase&& phase) {
    std::vector<float> start(words), merged(words);
    std::memcpy(start.data(), sm, words * sizeof(float));
    std::memcpy(merged.data(), sm, words * sizeof(float));
    std::vector<int> writer(words, -1);
    for (size_t k = threads.size(); k-- > 0;) {
      phase(static_cast<int>(k), threads[k]);
      for (size_t i = 0; i < words; ++i) {
        if (std::memcmp(&sm[i], &start[i], sizeof(float)) == 0) continue;
        if (writer[i] >= 0 && writer[i] != static_cast<int>(k)) ++g_shared_conflicts;
        writer[i] = static_cast<int>(k);
        merged[i] = sm[i];
        sm[i] = start[i];
      }
    }
    std::memcpy(sm, merged.data(), words * sizeof(float));
  }
};

bool g_snapshot = false;  // run blocks with SnapshotExec instead of HostExec

struct HostLauncher {
  int64_t budget = 96 * 1024;
  int64_t sms = 132;
  int64_t last_segments = 0;  // of the last backward call, for the test names
  int64_t smem_budget() const { return budget; }
  int64_t sm_count() const { return sms; }

  // One "launch": every block of the plan in turn, each with NaN-filled shared memory and
  // registers; `run` is run_forward_block or run_backward_block, `args` the block's arguments.
  template <typename Block, typename Run, typename... Args>
  static Status emulate(const BlockPlan& p, Run run, const Args&... args) {
    for (int64_t blk = 0; blk < p.blocks; ++blk) {
      std::vector<float> smem(p.smem_floats, kNaN);
      const Block block(args..., blk, smem.data());
      if (g_snapshot) {
        SnapshotExec<typename Block::Thread> ex(p.threads, smem.data(), smem.size());
        poison(ex);
        run(block, ex);
      } else {
        HostExec<typename Block::Thread> ex(p.threads);
        poison(ex);
        run(block, ex);
      }
    }
    return Status::kOk;
  }
  Status blocks_forward(const ForwardArgs<float>& a, const BlockPlan& p, bool vector, Pass pass,
                        const SegmentArrays& segs, float* work) {
    auto run = [](const auto& block, auto& ex) { run_forward_block(block, ex); };
    if (vector) return emulate<ForwardBlock<float, true>>(p, run, a, p, pass, segs, work);
    return emulate<ForwardBlock<float, false>>(p, run, a, p, pass, segs, work);
  }
  Status blocks_backward(const BackwardArgs<float>& g, const BlockPlan& p, bool vector, Pass pass, const Workspace& w,
                         float* work) {
    last_segments = p.segments;
    auto run = [](const auto& block, auto& ex) { run_backward_block(block, ex); };
    if (vector) return emulate<BackwardBlock<float, true>>(p, run, g, p, pass, w, work);
    return emulate<BackwardBlock<float, false>>(p, run, g, p, pass, w, work);
  }
  template <typename Job>
  Status each_index(const Job& job) {
    for (int64_t i = 0; i < job.count(); ++i) job(i);
    return Status::kOk;
  }
  Status sum_leading(const float* in, float* out, int64_t K, int64_t inner, int64_t count) {
    for (int64_t i = 0; i < count; ++i) out[i] = sum_leading_at(in, K, inner, i);
    return Status::kOk;
  }
  Status fill(float* p, int64_t n, float v) {
    for (int64_t i = 0; i < n; ++i) p[i] = v;
    return Status::kOk;
  }
  Status copy(float* dst, const float* src, int64_t n) {
    std::memcpy(dst, src, sizeof(float) * n);
    return Status::kOk;
  }
};

CouplingKind kind_of(const std::string& c) {
  if (c == "none") return CouplingKind::kNone;
  if (c == "general") return CouplingKind::kGeneral;
  return CouplingKind::kRankOne;
}

std::vector<float> poisoned(size_t n) { return std::vector<float>(n, kNaN); }

// Forward and backward through the drivers with the emulating launcher; compares with naive.
void compare_case(const Case& c, int64_t budget, int64_t row_pad = 0, int64_t segments = 1, int64_t sms = 132) {
  std::mt19937_64 rng(99 + c.Bt * 7 + c.M * 131 + c.D * 17 + c.N * 3 + c.L * 1009);
  naive::Problem p = make_problem(c, rng);
  Vec dout, dlast;
  random_upstream(p, c.with_optional, rng, dout, dlast);
  const naive::Grads ref = naive::run(p, dout, dlast);
  const int64_t Bt = p.Bt, M = p.M, D = p.D, N = p.N, L = p.L, Lp = L + row_pad;
  const CouplingKind kind = kind_of(c.coupling);
  auto padded = [&](const Vec& v, int64_t R) { return padded_rows<float>(v, Bt * M * R, L, Lp); };

  std::vector<float> u = padded(p.u, D), delta = padded(p.delta, D), B = padded(p.B, N), C = padded(p.C, N),
                     go = padded(dout, D);
  std::vector<float> z = p.z.empty() ? std::vector<float>() : padded(p.z, D);
  std::vector<float> A = cast<float>(p.A), Ds = cast<float>(p.Dskip), bias = cast<float>(p.bias),
                     W = cast<float>(p.W), init = cast<float>(p.init), gl = cast<float>(dlast);
  const InputPointers<float> x{u.data(), delta.data(), A.data(), B.data(), C.data(), data_or_null(Ds),
                               data_or_null(z), data_or_null(bias), W.data(), data_or_null(init)};
  ForwardArgs<float> f = forward_args_for(p, x, Lp, kind, c.coupling == "mean" ? 1.0 / M : 1.0);
  std::vector<float> out = poisoned(Bt * M * D * L), last = poisoned(Bt * M * D * N),
                     ck = poisoned(Bt * D * num_cuda_chunks(L, kind) * checkpoint_width(kind, M, N));
  f.out = out.data();
  f.last_state = last.data();
  f.checkpoints = ck.data();
  HostLauncher launch;
  launch.budget = budget;
  launch.sms = sms;
  std::vector<float> fwork = poisoned(std::max<int64_t>(1, workspace_floats(f.size, kind, false, segments, sms)));
  const Status fst = forward_driver(f, segments, fwork.data(), launch);

  BackwardArgs<float> g;
  g.fwd = f;
  g.checkpoints = ck.data();
  g.dout = {go.data(), M * D * Lp, D * Lp, Lp};
  g.dlast_state = gl.empty() ? nullptr : gl.data();
  std::vector<float> du = poisoned(Bt * M * D * L), dd = poisoned(du.size()), dA = poisoned(A.size()),
                     dB = poisoned(Bt * M * N * L), dC = poisoned(dB.size()), dD = poisoned(M * D),
                     dz = poisoned(du.size()), dbias = poisoned(M * D), dW = poisoned(M * M),
                     dinit = poisoned(Bt * M * D * N);
  std::vector<float> work = poisoned(std::max<int64_t>(1, workspace_floats(f.size, kind, true, segments, sms)));
  g.du = du.data(); g.ddelta = dd.data(); g.dA = dA.data(); g.dB = dB.data(); g.dC = dC.data();
  g.dD = dD.data(); g.dz = dz.data(); g.ddelta_bias = dbias.data(); g.dW = dW.data();
  g.dinitial_state = dinit.data();
  const Status bst = backward_driver(g, segments, work.data(), launch);

  const BlockPlan plan = plan_for(f.size, kind, true, budget);
  char name[200];
  std::snprintf(name, sizeof(name), "cuda-emulated Bt=%lld M=%lld D=%lld N=%lld L=%lld %s%s pad=%lld sub=%d segments=%lld",
                (long long)Bt, (long long)M, (long long)D, (long long)N, (long long)L, c.coupling.c_str(),
                c.with_optional ? " +opt" : "", (long long)row_pad, plan.sub, (long long)launch.last_segments);
  check(fst == Status::kOk && bst == Status::kOk, std::string(name) + " status");
  if (segments > 1 && kind != CouplingKind::kGeneral)  // the split was taken
    check(launch.last_segments > 1, std::string(name) + " ran in time segments");
  if (kind == CouplingKind::kGeneral) check(launch.last_segments == 1, std::string(name) + " general W: one segment");
  if (segments == 0 && sms == 1 && kind != CouplingKind::kGeneral)
    check(launch.last_segments > 1, std::string(name) + " auto split on a small grid");
  auto cmp = [&](const char* what, const std::vector<float>& x, const Vec& r, double tol) {
    const double e = rel_err(to_double(x), r);
    check(e <= tol, std::string(name) + " " + what + " rel err " + std::to_string(e));
  };
  // Outputs (docs: float32 tolerances).
  cmp("out", out, ref.out, 1e-4);
  cmp("last_state", last, ref.last, 1e-4);
  cmp("du", du, ref.du, 1e-3);
  cmp("ddelta", dd, ref.ddelta, 1e-3);
  cmp("dA", dA, ref.dA, 1e-3);
  cmp("dB", dB, ref.dB, 1e-3);
  cmp("dC", dC, ref.dC, 1e-3);
  cmp("dinit", dinit, ref.dinit, 1e-3);
  if (c.with_optional) {
    cmp("dD", dD, ref.dD, 1e-3);
    cmp("dz", dz, ref.dz, 1e-3);
    cmp("ddelta_bias", dbias, ref.dbias, 1e-3);
  }
  if (kind == CouplingKind::kGeneral) cmp("dW", dW, ref.dW, 1e-3);
}

// The plan: shared memory shrinks the reduction rounds to fit. Every configuration the API
// accepts fits the opt-in limit of an A100 (163 KB per block; H100: 227 KB); the forward also
// fits the 99 KB of sm_86 / sm_89 GPUs (where a large backward reports kInvalidSize).
void plan_cases() {
  for (int64_t M : {1, 3, 8})
    for (int64_t N : {1, 16, 64, 128, 256}) {
      const Sizes s{1, M, 64, N, 100};
      for (CouplingKind kind : {CouplingKind::kRankOne, CouplingKind::kGeneral})
        for (bool bwd : {false, true}) {
          const int64_t limit = bwd ? 163 * 1024 : 99 * 1024;
          const BlockPlan p = plan_for(s, kind, bwd, limit);
          const std::string name = " M=" + std::to_string(M) + " N=" + std::to_string(N) +
                                   (bwd ? " backward" : " forward") + (kind == CouplingKind::kGeneral ? " vector" : "");
          check(smem_bytes(p) <= limit, "plan fits" + name);
          check(p.sub >= 1 && p.chunk == cuda_chunk(kind) && p.chunk % p.sub == 0 &&
                    p.threads == 32 * ((N + 7) / 8) && p.threads <= 1024,
                "plan shape" + name);
        }
    }
}

}  // namespace

int main() {
  std::setvbuf(stdout, nullptr, _IONBF, 0);
  const int64_t big = 163 * 1024;  // an A100's opt-in limit
  const std::vector<Case> cases = {
      {2, 3, 3, 5, 1, "mean", true},     {1, 1, 2, 3, 7, "mean", false},    {2, 3, 17, 19, 63, "mean", true},
      {1, 2, 2, 3, 2049, "mean", true},  {2, 3, 3, 5, 7, "sum", true},      {1, 5, 3, 4, 9, "sum", true},
      {2, 4, 3, 1, 65, "none", true},    {1, 1, 5, 9, 63, "none", true},    {2, 3, 3, 5, 7, "general", true},
      {1, 5, 17, 19, 40, "general", true}, {1, 1, 2, 4, 20, "general", false}, {1, 8, 2, 3, 9, "general", true},
      {1, 8, 2, 3, 33, "mean", true},    {2, 3, 33, 5, 34, "mean", true},   {1, 2, 70, 3, 17, "general", true},
      {1, 2, 3, 32, 20, "mean", true},   {1, 3, 2, 64, 18, "none", true},   {1, 3, 2, 256, 9, "general", true},
      {1, 8, 2, 256, 5, "mean", true},   {3, 2, 40, 16, 50, "sum", false},
  };
  for (const Case& c : cases) compare_case(c, big);
  // Small shared-memory budgets force reduction rounds of 8, 4, 2 and 1 steps.
  // Backward plans of 35.1, 30.4, 28.0 and 26.8 KB (rounds of 8, 4, 2, 1 steps).
  for (int64_t bytes : {36864, 31744, 29184, 27648}) compare_case({2, 3, 17, 19, 37, "mean", true}, bytes);
  // The vector path (8-step chunks): plans of 17.2 and 14.8 KB (rounds of 4 and 1 steps).
  compare_case({1, 3, 5, 12, 21, "general", true}, 17600);
  compare_case({1, 3, 5, 12, 21, "general", true}, 15000);
  compare_case({2, 3, 17, 19, 63, "mean", true}, big, /*row_pad=*/5);
  // Time segments (rank one and "none"; a general W always runs as one segment): the summaries,
  // the carry pass and the per-segment partial sums, with d last_state and initial_state.
  for (const char* coupling : {"mean", "sum", "none", "general"})
    for (int64_t segments : {2, 3, 7}) {
      if (std::string(coupling) == "sum" && segments > 2) continue;
      compare_case({2, 3, 5, 6, std::string(coupling) == "sum" ? 40 : 110, coupling, true}, big, 0, segments);
    }
  compare_case({1, 1, 3, 9, 100, "mean", false}, big, 3, 4);
  compare_case({1, 2, 33, 5, 37, "none", true}, 12000, 0, 5);  // short rounds too
  // Automatic choice: on a 1-SM "GPU" a small grid at long L splits (and must stay exact).
  compare_case({1, 2, 8, 4, 300, "mean", true}, big, 0, /*segments=*/0, /*sms=*/1);
  compare_case({1, 2, 8, 4, 300, "none", true}, big, 0, /*segments=*/0, /*sms=*/1);
  plan_cases();
  // Races: small cases again with every phase's threads seeing phase-start shared memory.
  g_snapshot = true;
  for (const Case& c : std::vector<Case>{{2, 3, 17, 19, 40, "mean", true}, {1, 2, 33, 9, 30, "none", true},
                                         {1, 3, 5, 12, 21, "general", true}, {2, 3, 3, 5, 7, "sum", true}})
    compare_case(c, big);
  compare_case({2, 3, 17, 19, 37, "mean", true}, 29184);  // rounds of 2 steps
  compare_case({1, 2, 6, 5, 200, "mean", true}, big, 0, 3);
  compare_case({1, 2, 6, 5, 200, "none", true}, big, 0, 3);
  g_snapshot = false;
  check(g_shared_conflicts == 0, "no shared word written by two threads in one phase (" +
                                     std::to_string(g_shared_conflicts) + " found)");
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
