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

bool g_snapshot = false;   // run blocks with SnapshotExec instead of HostExec
bool g_recompute = false;  // call the backward without checkpoints (it recomputes them)
std::vector<int64_t> g_lengths;  // per-sample lengths of the next compare_case (empty: none)
std::vector<int64_t> g_kernel_lengths;  // if not empty: the lengths the kernels get instead

struct HostLauncher {
  int64_t budget = 96 * 1024;
  int64_t sms = 132;
  int64_t last_segments = 0;  // of the last backward call, for the test names
  int launches = 0;           // emulated kernel launches and copies
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
    ++launches;
    auto run = [](const auto& block, auto& ex) { run_forward_block(block, ex); };
    if (vector) return emulate<ForwardBlock<float, true>>(p, run, a, p, pass, segs, work);
    return emulate<ForwardBlock<float, false>>(p, run, a, p, pass, segs, work);
  }
  Status blocks_backward(const BackwardArgs<float>& g, const BlockPlan& p, bool vector, Pass pass, const Workspace& w,
                         float* work) {
    ++launches;
    last_segments = p.segments;
    auto run = [](const auto& block, auto& ex) { run_backward_block(block, ex); };
    if (vector) return emulate<BackwardBlock<float, true>>(p, run, g, p, pass, w, work);
    return emulate<BackwardBlock<float, false>>(p, run, g, p, pass, w, work);
  }
  template <typename Job>
  Status each_index(const Job& job) {
    ++launches;
    for (int64_t i = 0; i < job.count(); ++i) job(i);
    return Status::kOk;
  }
  Status sum_leading(const float* in, float* out, int64_t K, int64_t inner, int64_t count) {
    ++launches;
    for (int64_t i = 0; i < count; ++i) out[i] = sum_leading_at(in, K, inner, i);
    return Status::kOk;
  }
  Status fill(float* p, int64_t n, float v) {
    ++launches;
    for (int64_t i = 0; i < n; ++i) p[i] = v;
    return Status::kOk;
  }
  Status copy(float* dst, const float* src, int64_t n) {
    ++launches;
    std::memcpy(dst, src, sizeof(float) * n);
    return Status::kOk;
  }
};

// ---- per-sample lengths: the reference is each sample run alone on its cut inputs ----

// Apply fn(index) to every element at steps >= lengths[b] of a (Bt, M, R, L) array.
template <typename Fn>
void for_padded_steps(const naive::Problem& p, int64_t R, const Fn& fn) {
  for (int64_t b = 0; b < p.Bt; ++b)
    for (int64_t mr = 0; mr < p.M * R; ++mr)
      for (int64_t t = naive::length_of(p, b); t < p.L; ++t) fn((b * p.M * R + mr) * p.L + t);
}

// Steps [0, Lb) of sample b of a (Bt, M, R, L) array.
Vec cut_steps(const naive::Problem& p, const Vec& v, int64_t R, int64_t b, int64_t Lb) {
  Vec o;
  if (v.empty()) return o;
  for (int64_t mr = 0; mr < p.M * R; ++mr)
    for (int64_t t = 0; t < Lb; ++t) o.push_back(v[(b * p.M * R + mr) * p.L + t]);
  return o;
}

// The spec of lengths: sample b alone over its first lengths[b] steps (naive::run of a batch of
// one with L = lengths[b]); its results placed back into batch arrays with zeros at the padded
// steps; the parameter gradients summed over the samples.
naive::Grads per_sample_reference(const naive::Problem& p, const Vec& dout, const Vec& dlast) {
  const int64_t M = p.M, D = p.D, N = p.N, L = p.L, S = M * D * N;
  naive::Grads r;
  r.out.assign(p.Bt * M * D * L, 0.0), r.du = r.ddelta = r.dz = r.out;
  r.dB.assign(p.Bt * M * N * L, 0.0), r.dC = r.dB;
  r.last.assign(p.Bt * S, 0.0), r.dinit = r.last;
  r.dA.assign(S, 0.0), r.dD.assign(M * D, 0.0), r.dbias = r.dD, r.dW.assign(M * M, 0.0);
  for (int64_t b = 0; b < p.Bt; ++b) {
    const int64_t Lb = naive::length_of(p, b);
    auto states = [&](const Vec& v) { return v.empty() ? Vec() : Vec(v.begin() + b * S, v.begin() + (b + 1) * S); };
    const Vec init = states(p.init), gl = states(dlast);
    auto put = [&](Vec& dst, const Vec& src, int64_t R) {
      for (int64_t mr = 0; mr < M * R; ++mr)
        for (int64_t t = 0; t < Lb; ++t) dst[(b * M * R + mr) * L + t] = src[mr * Lb + t];
    };
    auto put_states = [&](Vec& dst, const Vec& src) {
      for (int64_t i = 0; i < S && !src.empty(); ++i) dst[b * S + i] = src[i];
    };
    if (Lb == 0) {  // no step: the last state is the initial state, d initial_state is d last_state
      put_states(r.last, init);
      put_states(r.dinit, gl);
      continue;
    }
    naive::Problem q = p;
    q.Bt = 1, q.L = Lb, q.lengths.clear();
    q.u = cut_steps(p, p.u, D, b, Lb), q.delta = cut_steps(p, p.delta, D, b, Lb);
    q.B = cut_steps(p, p.B, N, b, Lb), q.C = cut_steps(p, p.C, N, b, Lb), q.z = cut_steps(p, p.z, D, b, Lb);
    q.init = init;
    const naive::Grads one = naive::run(q, cut_steps(p, dout, D, b, Lb), gl);
    put(r.out, one.out, D), put(r.du, one.du, D), put(r.ddelta, one.ddelta, D), put(r.dz, one.dz, D);
    put(r.dB, one.dB, N), put(r.dC, one.dC, N);
    put_states(r.last, one.last), put_states(r.dinit, one.dinit);
    for (size_t i = 0; i < r.dA.size(); ++i) r.dA[i] += one.dA[i];
    for (size_t i = 0; i < r.dD.size(); ++i) r.dD[i] += one.dD[i], r.dbias[i] += one.dbias[i];
    for (size_t i = 0; i < r.dW.size(); ++i) r.dW[i] += one.dW[i];
  }
  return r;
}

// Random lengths in [0, L] for Bt samples, with 0, 1 and L among them when Bt >= 3 (as many of
// them as fit otherwise).
std::vector<int64_t> random_lengths(int64_t Bt, int64_t L, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int64_t> any(0, L);
  std::vector<int64_t> len(Bt);
  for (auto& x : len) x = any(rng);
  const int64_t special[] = {0, L < 1 ? 0 : 1, L};
  for (int64_t i = 0; i < 3 && i < Bt; ++i) len[(i * 5 + seed) % Bt] = special[i];
  return len;
}

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
  const bool with_lengths = !g_lengths.empty();
  if (with_lengths) {
    p.lengths = g_lengths;
    // Inputs at padded steps are NaN: reading any of them would show in the results.
    const double nan = std::nan("");
    for_padded_steps(p, c.D, [&](int64_t i) {
      p.u[i] = p.delta[i] = dout[i] = nan;
      if (!p.z.empty()) p.z[i] = nan;
    });
    for_padded_steps(p, c.N, [&](int64_t i) { p.B[i] = p.C[i] = nan; });
  }
  const naive::Grads ref = with_lengths ? per_sample_reference(p, dout, dlast) : naive::run(p, dout, dlast);
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
  f.lengths = !g_kernel_lengths.empty() ? g_kernel_lengths.data() : with_lengths ? p.lengths.data() : nullptr;
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
  std::vector<float> work =
      poisoned(std::max<int64_t>(1, workspace_floats(f.size, kind, true, segments, sms, g_recompute)));
  if (g_recompute) g.checkpoints = nullptr;
  g.du = du.data(); g.ddelta = dd.data(); g.dA = dA.data(); g.dB = dB.data(); g.dC = dC.data();
  g.dD = dD.data(); g.dz = dz.data(); g.ddelta_bias = dbias.data(); g.dW = dW.data();
  g.dinitial_state = dinit.data();
  const Status bst = backward_driver(g, segments, work.data(), launch);

  const BlockPlan plan = plan_for(f.size, kind, true, budget);
  std::string lengths_text;
  for (int64_t n : p.lengths) lengths_text += (lengths_text.empty() ? " lengths=" : ",") + std::to_string(n);
  for (size_t i = 0; i < g_kernel_lengths.size(); ++i)
    lengths_text += (i == 0 ? " given as " : ",") + std::to_string(g_kernel_lengths[i]);
  char name[400];
  std::snprintf(name, sizeof(name),
                "cuda-emulated Bt=%lld M=%lld D=%lld N=%lld L=%lld %s%s pad=%lld sub=%d tiles=%d segments=%lld%s%s",
                (long long)Bt, (long long)M, (long long)D, (long long)N, (long long)L, c.coupling.c_str(),
                c.with_optional ? " +opt" : "", (long long)row_pad, plan.sub, plan.tiles,
                (long long)launch.last_segments, g_recompute ? " recomputed checkpoints" : "", lengths_text.c_str());
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
  if (!with_lengths) return;
  // Exact zeros at the padded steps; every checkpoint slot written (the backward reads only the
  // scanned chunks', the rest hold the final state).
  bool zeros = true;
  for_padded_steps(p, D, [&](int64_t i) {
    zeros = zeros && out[i] == 0.0f && du[i] == 0.0f && dd[i] == 0.0f && (!c.with_optional || dz[i] == 0.0f);
  });
  for_padded_steps(p, N, [&](int64_t i) { zeros = zeros && dB[i] == 0.0f && dC[i] == 0.0f; });
  check(zeros, std::string(name) + " out, du, ddelta, dz, dB, dC exactly 0 past each length");
  if (!g_recompute) {
    bool written = true;
    for (float v : ck) written = written && !std::isnan(v);
    check(written, std::string(name) + " every checkpoint slot written");
  }
}

// The plan: shared memory shrinks the reduction rounds, then tiles the backward's dB / dC sums,
// to fit. Every configuration the API accepts fits the 99 KB (101,376 bytes) of opt-in shared
// memory of sm_86 / sm_89 GPUs, forward and backward; up to 64 KB the plan stays in one tile.
void plan_cases() {
  const int64_t sm86 = 101376;
  for (int64_t M : {1, 3, 5, 8})
    for (int64_t N : {1, 16, 19, 64, 128, 200, 256}) {
      const Sizes s{1, M, 64, N, 100};
      for (CouplingKind kind : {CouplingKind::kRankOne, CouplingKind::kNone, CouplingKind::kGeneral})
        for (bool bwd : {false, true})
          for (int64_t limit : {sm86, int64_t(163 * 1024)}) {
            const BlockPlan p = plan_for(s, kind, bwd, limit);
            const std::string name = " M=" + std::to_string(M) + " N=" + std::to_string(N) +
                                     (bwd ? " backward" : " forward") + (kind == CouplingKind::kRankOne ? "" : " vector") +
                                     " limit=" + std::to_string(limit);
            check(smem_bytes(p) <= limit, "plan fits" + name);
            check(p.sub >= 1 && p.chunk == cuda_chunk(kind) && p.chunk % p.sub == 0 &&
                      p.threads == 32 * ((N + 7) / 8) && p.threads <= 1024 && p.tiles >= 1 &&
                      p.tiles * p.tile_groups >= p.G && (p.tiles - 1) * p.tile_groups < p.G && (bwd || p.tiles == 1),
                  "plan shape" + name);
            if (smem_bytes(p) <= kPreferredSmemBytes) check(p.tiles == 1, "one tile within 64 KB" + name);
          }
    }
  // The sizes that need tiles on sm_86: M = 8, N = 256 in both paths.
  check(plan_for({1, 8, 64, 256, 100}, CouplingKind::kRankOne, true, sm86).tiles == 2, "M=8 N=256 rank one: 2 tiles");
  check(plan_for({1, 8, 64, 256, 100}, CouplingKind::kGeneral, true, sm86).tiles == 2, "M=8 N=256 vector: 2 tiles");
  check(plan_for({1, 8, 64, 256, 100}, CouplingKind::kRankOne, true, 163 * 1024).tiles == 1, "A100: 1 tile");
  // Too small a budget: the smallest layout, which the driver refuses (kInvalidSize, no launch).
  HostLauncher launch;
  launch.budget = 20000;
  std::vector<float> buf = poisoned(1 << 16);
  float* x = buf.data();
  ForwardArgs<float> f;
  f.size = {1, 8, 2, 256, 3};
  f.u = f.delta = f.B = f.C = {x, 0, 0, 0};
  f.A = f.out = f.checkpoints = x;
  BackwardArgs<float> g;
  g.fwd = f;
  g.dout = f.u;
  g.du = g.ddelta = g.dA = g.dB = g.dC = x;
  check(forward_driver(f, 1, x, launch) == Status::kInvalidSize, "a forward that cannot fit is refused");
  check(backward_driver(g, 1, x, launch) == Status::kInvalidSize, "a backward that cannot fit is refused");
  check(launch.launches == 0 && std::isnan(buf[0]) && std::isnan(buf.back()), "and nothing ran");
}

// The shared-memory budget of the backward plan with rounds of `sub` steps in `tiles` tiles.
int64_t budget_for(const Case& c, int sub, int tiles = 1) {
  const Sizes s{c.Bt, c.M, c.D, c.N, c.L};
  const BlockPlan p = make_plan(s, kind_of(c.coupling), true, 0, 1);  // nothing fits: the base shape
  return smem_bytes(layout(p, true, sub, tiles));
}

// compare_case at exactly that budget, after checking that the plan takes that many tiles and
// rounds at least that long (longer ones may fit the same area: the y partials share it).
void compare_layout(const Case& c, int sub, int tiles = 1) {
  const int64_t budget = budget_for(c, sub, tiles);
  const BlockPlan p = plan_for({c.Bt, c.M, c.D, c.N, c.L}, kind_of(c.coupling), true, budget);
  check(p.sub >= sub && p.tiles == tiles && smem_bytes(p) <= budget,
        "budget " + std::to_string(budget) + " gives " + std::to_string(tiles) + " tiles");
  compare_case(c, budget);
}

// Empty sizes (batch, D or L zero, alone and together) through the drivers: every gradient is
// exact zeros (d initial_state is d last_state), including dB and dC, which are not empty when
// only D is zero; the forward's last state is the initial state.
void empty_cases() {
  for (const char* coupling : {"mean", "general"})
    for (int mask = 1; mask < 8; ++mask) {
      const int64_t Bt = mask & 1 ? 0 : 2, D = mask & 2 ? 0 : 3, L = mask & 4 ? 0 : 5, M = 3, N = 4;
      const CouplingKind kind = kind_of(coupling);
      std::vector<float> x(64, 0.5f), W(M * M, 0.25f), init(Bt * M * D * N, 1.5f), dlast(init.size(), -2.0f);
      ForwardArgs<float> f;
      f.size = {Bt, M, D, N, L};
      f.u = f.delta = f.B = f.C = {x.data(), 0, 0, 0};
      f.A = x.data();
      f.coupling = kind;
      f.W = W.data();
      f.initial_state = init.data();
      std::vector<float> last = poisoned(init.size());
      f.last_state = last.data();
      HostLauncher launch;
      const Status fst = forward_driver(f, 0, nullptr, launch);
      BackwardArgs<float> g;
      g.fwd = f;
      g.dout = {x.data(), 0, 0, 0};
      g.dlast_state = dlast.data();
      std::vector<float> dA = poisoned(M * D * N), dB = poisoned(Bt * M * N * L), dC = poisoned(dB.size()),
                         dD = poisoned(M * D), dbias = poisoned(M * D), dW = poisoned(M * M),
                         dinit = poisoned(init.size()), du = poisoned(Bt * M * D * L), dd = poisoned(du.size());
      g.du = du.data(), g.ddelta = dd.data(), g.dA = dA.data(), g.dB = dB.data(), g.dC = dC.data();
      g.dD = dD.data(), g.ddelta_bias = dbias.data(), g.dW = dW.data(), g.dinitial_state = dinit.data();
      const Status bst = backward_driver(g, 0, nullptr, launch);
      const std::string name = std::string("empty ") + coupling + " Bt=" + std::to_string(Bt) +
                               " D=" + std::to_string(D) + " L=" + std::to_string(L);
      auto all = [](const std::vector<float>& v, float want) {
        for (float e : v)
          if (!(e == want)) return false;
        return true;
      };
      check(fst == Status::kOk && bst == Status::kOk, name + " status");
      check(last == init, name + " last_state = initial_state");
      check(all(dA, 0) && all(dB, 0) && all(dC, 0) && all(dD, 0) && all(dbias, 0) && all(dW, 0),
            name + " gradients exactly zero (dB " + std::to_string(dB.size()) + " elements)");
      check(dinit == dlast, name + " d initial_state = d last_state");
    }
}

// Per-sample lengths through the drivers, against each sample run alone on its cut inputs:
// random lengths with 0, 1 and L among them, every coupling, odd L, one segment and several,
// lengths at chunk and segment boundaries, short rounds and tiles, recomputed checkpoints.
void lengths_cases(int64_t big) {
  uint64_t seed = 1;
  for (const char* coupling : {"mean", "sum", "none", "general"})
    for (int64_t segments : {1, 3}) {
      const int64_t L = std::string(coupling) == "sum" ? 41 : 75;
      const Case c{5, 3, 5, 6, L, coupling, true};
      g_lengths = random_lengths(c.Bt, c.L, seed++);
      compare_case(c, big, 0, segments);
    }
  g_lengths = random_lengths(4, 37, seed++);
  compare_case({4, 2, 33, 9, 37, "mean", false}, big);  // no optional inputs, two channel blocks
  g_lengths = random_lengths(3, 1, seed++);
  compare_case({3, 2, 3, 5, 1, "general", true}, big);  // L = 1
  g_lengths = random_lengths(3, 9, seed++);
  compare_case({3, 8, 2, 3, 9, "general", true}, big);  // M = 8
  // At chunk boundaries (16 steps rank one, 8 on the vector path) and with row padding.
  g_lengths = {16, 17, 15, 32, 0, 1, 49};
  compare_case({7, 2, 3, 5, 49, "mean", true}, big, /*row_pad=*/3);
  g_lengths = {8, 9, 7, 0, 1, 23, 16};
  compare_case({7, 2, 3, 5, 23, "none", true}, big);
  compare_case({7, 2, 3, 5, 23, "general", true}, big);
  // At segment boundaries: 110 steps in 3 segments of 48 (rank one) / 40 (vector) steps.
  g_lengths = {48, 47, 49, 96, 97, 0, 110, 1};
  compare_case({8, 2, 3, 5, 110, "mean", true}, big, 0, 3);
  g_lengths = {40, 39, 41, 80, 81, 0, 110, 1};
  compare_case({8, 2, 3, 5, 110, "none", true}, big, 0, 3);
  g_lengths = random_lengths(3, 300, seed++);  // automatic split on a 1-SM "GPU"
  compare_case({3, 2, 8, 4, 300, "mean", true}, big, 0, /*segments=*/0, /*sms=*/1);
  // Short rounds and tiled dB / dC sums (budgets as in main), large N.
  const Case round_case{3, 3, 17, 19, 37, "mean", true}, vector_case{3, 3, 5, 12, 21, "general", true};
  g_lengths = {0, 37, 22};
  compare_layout(round_case, 1, 3);
  compare_layout(round_case, 4);
  g_lengths = {21, 5, 0};
  compare_layout(vector_case, 1, 2);
  g_lengths = {0, 1, 9};
  compare_case({3, 8, 2, 256, 9, "mean", true}, 101376);
  // A backward without checkpoints recomputes them with the same lengths.
  g_recompute = true;
  g_lengths = random_lengths(5, 63, seed++);
  compare_case({5, 3, 17, 19, 63, "mean", true}, big);
  compare_case({5, 3, 5, 12, 63, "general", true}, big);
  g_lengths = random_lengths(4, 200, seed++);
  compare_case({4, 2, 6, 5, 200, "none", true}, big, 0, 3);
  g_recompute = false;
  g_lengths.clear();
}

// Out-of-range lengths from a direct C++ caller: the kernels clamp them to [0, L] (the Python
// layer rejects them first), so the results are those of the clamped lengths and nothing is read
// or written out of bounds.
void clamped_lengths_case(int64_t big) {
  g_lengths = {0, 21, 4};
  g_kernel_lengths = {-3, 26, 4};
  compare_case({3, 2, 3, 5, 21, "mean", true}, big, 0, 2);
  compare_case({3, 2, 3, 5, 21, "general", true}, big);
  g_kernel_lengths.clear();
  g_lengths.clear();
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
  // Small shared-memory budgets force reduction rounds of 8, 4, 2 and 1 steps (rank one), and
  // 4 and 1 steps on the vector path (8-step chunks).
  const Case round_case{2, 3, 17, 19, 37, "mean", true}, vector_case{1, 3, 5, 12, 21, "general", true};
  for (int sub : {8, 4, 2, 1}) compare_layout(round_case, sub);
  for (int sub : {4, 1}) compare_layout(vector_case, sub);
  compare_case({2, 3, 17, 19, 63, "mean", true}, big, /*row_pad=*/5);
  // M = 8, N = 256 within sm_86's 99 KB: rounds of one step in 2 tiles.
  compare_case({1, 8, 2, 256, 5, "mean", true}, 101376);
  compare_case({1, 8, 2, 256, 3, "general", true}, 101376);
  // Tiled dB / dC sums (budgets below rounds of one step in one tile): 2 and 3 tiles of the 3
  // state groups of N = 19, and 2 of the vector path's.
  for (int tiles : {2, 3}) compare_layout(round_case, 1, tiles);
  compare_layout(vector_case, 1, 2);
  // A backward called without checkpoints recomputes them into its workspace.
  g_recompute = true;
  compare_case({2, 3, 17, 19, 63, "mean", true}, big);
  compare_case({1, 3, 5, 12, 21, "general", true}, big);
  compare_case({1, 2, 6, 5, 200, "none", true}, big, 0, 3);  // with time segments
  g_recompute = false;
  empty_cases();
  // Time segments (rank one and "none"; a general W always runs as one segment): the summaries,
  // the carry pass and the per-segment partial sums, with d last_state and initial_state.
  for (const char* coupling : {"mean", "sum", "none", "general"})
    for (int64_t segments : {2, 3, 7}) {
      if (std::string(coupling) == "sum" && segments > 2) continue;
      compare_case({2, 3, 5, 6, std::string(coupling) == "sum" ? 40 : 110, coupling, true}, big, 0, segments);
    }
  compare_case({1, 1, 3, 9, 100, "mean", false}, big, 3, 4);
  compare_case({1, 2, 33, 5, 37, "none", true}, budget_for({1, 2, 33, 5, 37, "none", true}, 1), 0, 5);  // short rounds too
  // Automatic choice: on a 1-SM "GPU" a small grid at long L splits (and must stay exact).
  compare_case({1, 2, 8, 4, 300, "mean", true}, big, 0, /*segments=*/0, /*sms=*/1);
  compare_case({1, 2, 8, 4, 300, "none", true}, big, 0, /*segments=*/0, /*sms=*/1);
  lengths_cases(big);
  clamped_lengths_case(big);
  plan_cases();
  // Races: small cases again with every phase's threads seeing phase-start shared memory.
  g_snapshot = true;
  for (const Case& c : std::vector<Case>{{2, 3, 17, 19, 40, "mean", true}, {1, 2, 33, 9, 30, "none", true},
                                         {1, 3, 5, 12, 21, "general", true}, {2, 3, 3, 5, 7, "sum", true}})
    compare_case(c, big);
  compare_layout(round_case, 2);  // rounds of 2 steps
  compare_layout(round_case, 1, 3);
  compare_layout(vector_case, 1, 2);
  compare_case({1, 2, 6, 5, 200, "mean", true}, big, 0, 3);
  compare_case({1, 2, 6, 5, 200, "none", true}, big, 0, 3);
  g_lengths = {37, 0, 1, 16};  // with lengths: the padded-step phases too
  compare_case({4, 3, 17, 19, 40, "mean", true}, big);
  g_lengths = {110, 47, 0, 97};
  compare_case({4, 2, 6, 5, 110, "none", true}, big, 0, 3);
  g_lengths = {21, 0, 8};
  compare_case({3, 3, 5, 12, 21, "general", true}, big);
  g_lengths.clear();
  g_snapshot = false;
  check(g_shared_conflicts == 0, "no shared word written by two threads in one phase (" +
                                     std::to_string(g_shared_conflicts) + " found)");
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
