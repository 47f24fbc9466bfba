// C++ tests of the CPU kernels against the naive transcription of the spec (naive_scan.h) and
// against finite differences, for every coupling mode at odd sizes.
#include <cmath>
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "coupled_scan/coupled_scan.h"
#include "naive_scan.h"
#include "test_support.h"

using coupled_scan::CouplingKind;
using coupled_scan::Status;

template <typename T>
struct KernelResult {
  Vec out, last, du, ddelta, dA, dB, dC, dD, dz, dbias, dW, dinit;
  Status fwd_status, bwd_status;
};

// Runs forward and backward of the library on problem p (converted to T).
template <typename T>
static KernelResult<T> run_kernel(const naive::Problem& p, CouplingKind kind, double alpha,
                                  const Vec& dout, const Vec& dlast, int threads, int64_t row_pad = 0) {
  const int64_t Bt = p.Bt, M = p.M, D = p.D, N = p.N, L = p.L;
  // Sequence tensors may be stored with padded rows to test strided input.
  const int64_t Lp = L + row_pad;
  auto padded = [&](const Vec& v, int64_t R) { return padded_rows<T>(v, Bt * M * R, L, Lp); };
  std::vector<T> u = padded(p.u, D), delta = padded(p.delta, D), B = padded(p.B, N), C = padded(p.C, N);
  std::vector<T> z = p.z.empty() ? std::vector<T>() : padded(p.z, D);
  std::vector<T> A = cast<T>(p.A), Ds = cast<T>(p.Dskip), bias = cast<T>(p.bias), W = cast<T>(p.W),
                 init = cast<T>(p.init), go = cast<T>(dout), gl = cast<T>(dlast);
  const InputPointers<T> x{u.data(), delta.data(), A.data(), B.data(), C.data(), data_or_null(Ds),
                           data_or_null(z), data_or_null(bias), W.data(), data_or_null(init)};
  coupled_scan::ForwardArgs<T> f = forward_args_for(p, x, Lp, kind, alpha);
  std::vector<T> out(Bt * M * D * L), last(Bt * M * D * N),
      ck(Bt * D * coupled_scan::num_chunks(L) * coupled_scan::checkpoint_width(kind, M, N));
  f.out = out.data();
  f.last_state = last.data();
  f.checkpoints = ck.data();
  f.num_threads = threads;
  KernelResult<T> r;
  r.fwd_status = coupled_scan::forward_cpu(f);
  r.out = to_double(out);
  r.last = to_double(last);

  coupled_scan::BackwardArgs<T> g;
  g.fwd = f;
  g.checkpoints = ck.data();
  g.dout = {go.data(), M * D * L, D * L, L};
  g.dlast_state = gl.empty() ? nullptr : gl.data();
  std::vector<T> du(Bt * M * D * L), dd(du.size()), dA(A.size()), dB(Bt * M * N * L), dC(dB.size()),
      dD(M * D), dz(du.size()), dbias(M * D), dW(M * M), dinit(Bt * M * D * N);
  g.du = du.data(); g.ddelta = dd.data(); g.dA = dA.data(); g.dB = dB.data(); g.dC = dC.data();
  g.dD = dD.data(); g.dz = dz.data(); g.ddelta_bias = dbias.data(); g.dW = dW.data();
  g.dinitial_state = dinit.data();
  r.bwd_status = coupled_scan::backward_cpu(g);
  r.du = to_double(du); r.ddelta = to_double(dd); r.dA = to_double(dA); r.dB = to_double(dB);
  r.dC = to_double(dC); r.dD = to_double(dD); r.dz = to_double(dz); r.dbias = to_double(dbias);
  r.dW = to_double(dW); r.dinit = to_double(dinit);
  return r;
}

static CouplingKind kind_of(const std::string& c) {
  if (c == "none") return CouplingKind::kNone;
  if (c == "general") return CouplingKind::kGeneral;
  return CouplingKind::kRankOne;
}

template <typename T>
static void compare_case(const Case& c, double tol_out, double tol_grad, int64_t row_pad = 0) {
  std::mt19937_64 rng(1234 + c.Bt * 7 + c.M * 131 + c.D * 17 + c.N * 3 + c.L * 1009);
  naive::Problem p = make_problem(c, rng);
  Vec dout, dlast;
  random_upstream(p, c.with_optional, rng, dout, dlast);
  const naive::Grads ref = naive::run(p, dout, dlast);
  const double alpha = c.coupling == "mean" ? 1.0 / c.M : 1.0;
  const KernelResult<T> r = run_kernel<T>(p, kind_of(c.coupling), alpha, dout, dlast, 2, row_pad);
  char name[160];
  std::snprintf(name, sizeof(name), "%s Bt=%lld M=%lld D=%lld N=%lld L=%lld %s%s pad=%lld",
                sizeof(T) == 8 ? "f64" : "f32", (long long)c.Bt, (long long)c.M, (long long)c.D,
                (long long)c.N, (long long)c.L, c.coupling.c_str(), c.with_optional ? " +opt" : "",
                (long long)row_pad);
  check(r.fwd_status == Status::kOk && r.bwd_status == Status::kOk, std::string(name) + " status");
  auto cmp = [&](const char* what, const Vec& x, const Vec& ref_v, double tol) {
    const double e = rel_err(x, ref_v);
    check(e <= tol, std::string(name) + " " + what + " rel err " + std::to_string(e));
  };
  cmp("out", r.out, ref.out, tol_out);
  cmp("last_state", r.last, ref.last, tol_out);
  cmp("du", r.du, ref.du, tol_grad);
  cmp("ddelta", r.ddelta, ref.ddelta, tol_grad);
  cmp("dA", r.dA, ref.dA, tol_grad);
  cmp("dB", r.dB, ref.dB, tol_grad);
  cmp("dC", r.dC, ref.dC, tol_grad);
  cmp("dinit", r.dinit, ref.dinit, tol_grad);
  if (c.with_optional) {
    cmp("dD", r.dD, ref.dD, tol_grad);
    cmp("dz", r.dz, ref.dz, tol_grad);
    cmp("ddelta_bias", r.dbias, ref.dbias, tol_grad);
  }
  if (c.coupling == "general") cmp("dW", r.dW, ref.dW, tol_grad);
}

// Central finite differences of loss = <out, dout> + <last, dlast> in float64.
static void finite_difference_case(const std::string& coupling) {
  const Case c{2, 3, 3, 5, 9, coupling, true};
  std::mt19937_64 rng(99);
  naive::Problem p = make_problem(c, rng);
  std::normal_distribution<double> normal(0.0, 1.0);
  Vec dout(p.u.size()), dlast(c.Bt * c.M * c.D * c.N);
  for (auto& x : dout) x = normal(rng);
  for (auto& x : dlast) x = normal(rng);
  const CouplingKind kind = kind_of(coupling);
  const double alpha = coupling == "mean" ? 1.0 / c.M : 1.0;
  const KernelResult<double> r = run_kernel<double>(p, kind, alpha, dout, dlast, 1);
  auto loss = [&](const naive::Problem& q) {
    const KernelResult<double> k = run_kernel<double>(q, kind, alpha, dout, dlast, 1);
    double s = 0;
    for (size_t i = 0; i < dout.size(); ++i) s += k.out[i] * dout[i];
    for (size_t i = 0; i < dlast.size(); ++i) s += k.last[i] * dlast[i];
    return s;
  };
  struct Param { const char* name; Vec naive::Problem::*field; const Vec KernelResult<double>::*grad; };
  const Param params[] = {
      {"u", &naive::Problem::u, &KernelResult<double>::du},
      {"delta", &naive::Problem::delta, &KernelResult<double>::ddelta},
      {"A", &naive::Problem::A, &KernelResult<double>::dA},
      {"B", &naive::Problem::B, &KernelResult<double>::dB},
      {"C", &naive::Problem::C, &KernelResult<double>::dC},
      {"D", &naive::Problem::Dskip, &KernelResult<double>::dD},
      {"z", &naive::Problem::z, &KernelResult<double>::dz},
      {"delta_bias", &naive::Problem::bias, &KernelResult<double>::dbias},
      {"initial_state", &naive::Problem::init, &KernelResult<double>::dinit},
      {"W", &naive::Problem::W, &KernelResult<double>::dW},
  };
  for (const Param& prm : params) {
    if (std::string(prm.name) == "W" && coupling != "general") continue;
    const Vec& values = p.*(prm.field);
    for (size_t i = 0; i < values.size(); i += values.size() / 4 + 1) {
      naive::Problem hi = p, lo = p;
      const double eps = 1e-6;
      (hi.*(prm.field))[i] += eps;
      (lo.*(prm.field))[i] -= eps;
      const double fd = (loss(hi) - loss(lo)) / (2 * eps);
      const double an = (r.*(prm.grad))[i];
      const bool ok = std::fabs(fd - an) <= 1e-6 * (1.0 + std::fabs(fd));
      check(ok, "finite difference " + coupling + " d" + prm.name + "[" + std::to_string(i) +
                    "]: analytic " + std::to_string(an) + " vs numeric " + std::to_string(fd));
    }
  }
}

static void determinism_case() {
  const Case c{3, 3, 40, 19, 150, "general", true};
  std::mt19937_64 rng(5);
  naive::Problem p = make_problem(c, rng);
  Vec dout(p.u.size(), 0.0), dlast(c.Bt * c.M * c.D * c.N);
  std::normal_distribution<double> normal(0.0, 1.0);
  for (auto& x : dout) x = normal(rng);
  for (auto& x : dlast) x = normal(rng);
  for (const char* mode : {"general", "mean", "none"}) {
    const CouplingKind kind = kind_of(mode);
    const KernelResult<float> one = run_kernel<float>(p, kind, 1.0 / 3, dout, dlast, 1);
    const KernelResult<float> three = run_kernel<float>(p, kind, 1.0 / 3, dout, dlast, 3);
    const bool same = one.out == three.out && one.last == three.last && one.dB == three.dB &&
                      one.dC == three.dC && one.dA == three.dA && one.dW == three.dW && one.dbias == three.dbias &&
                      one.du == three.du && one.ddelta == three.ddelta && one.dD == three.dD &&
                      one.dz == three.dz && one.dinit == three.dinit;
    check(same, std::string("backward bitwise identical with 1 and 3 threads (") + mode + ")");
  }
}

static void status_cases() {
  const Case c{1, 2, 2, 3, 4, "mean", false};
  std::mt19937_64 rng(7);
  naive::Problem p = make_problem(c, rng);
  std::vector<float> u = cast<float>(p.u), A = cast<float>(p.A), B = cast<float>(p.B), out(u.size());
  coupled_scan::ForwardArgs<float> f;
  f.size = {1, 2, 2, 3, 4};
  f.u = {u.data(), 16, 8, 4};
  f.delta = f.u;
  f.A = A.data();
  f.B = {B.data(), 24, 12, 4};
  f.C = f.B;
  f.out = out.data();
  f.num_threads = 1;
  check(coupled_scan::forward_cpu(f) == Status::kOk, "valid call is ok");
  auto expect = [&](coupled_scan::ForwardArgs<float> g, Status want, const char* what) {
    check(coupled_scan::forward_cpu(g) == want, what);
  };
  auto g = f; g.size.modalities = 9; expect(g, Status::kInvalidSize, "M = 9 rejected");
  g = f; g.size.state = 0; expect(g, Status::kInvalidSize, "N = 0 rejected");
  g = f; g.size.state = 257; expect(g, Status::kInvalidSize, "N = 257 rejected");
  g = f; g.size.length = -1; expect(g, Status::kInvalidSize, "L < 0 rejected");
  g = f; g.num_threads = 0; expect(g, Status::kInvalidSize, "0 threads rejected");
  g = f; g.A = nullptr; expect(g, Status::kNullPointer, "null A rejected");
  g = f; g.coupling = CouplingKind::kGeneral; expect(g, Status::kNullPointer, "general without W rejected");
  g = f; g.coupling = static_cast<CouplingKind>(7); expect(g, Status::kInvalidArgument, "unknown coupling kind rejected");
  check(std::string(coupled_scan::status_string(Status::kInvalidSize)).size() > 0, "status strings");
}

static void empty_sequence_case() {
  // L = 0: last_state is the initial state; its gradient passes straight through.
  const Case c{2, 3, 4, 5, 0, "mean", true};
  std::mt19937_64 rng(11);
  naive::Problem p = make_problem(c, rng);
  Vec dlast(c.Bt * c.M * c.D * c.N);
  std::normal_distribution<double> normal(0.0, 1.0);
  for (auto& x : dlast) x = normal(rng);
  const KernelResult<double> r = run_kernel<double>(p, CouplingKind::kRankOne, 1.0 / 3, Vec(), dlast, 2);
  check(r.fwd_status == Status::kOk && r.bwd_status == Status::kOk, "L = 0 status");
  check(r.last == p.init, "L = 0 last_state equals initial_state");
  check(r.dinit == dlast, "L = 0 d initial_state equals d last_state");
}

int main() {
  std::setvbuf(stdout, nullptr, _IONBF, 0);
  std::printf("CPU kernels: %s\n", coupled_scan::cpu_isa());
  const std::vector<Case> cases = {
      {2, 3, 3, 5, 1, "mean", true},    {1, 1, 2, 3, 7, "mean", false},  {2, 3, 17, 19, 63, "mean", true},
      {2, 5, 3, 7, 130, "mean", true},  {1, 2, 2, 3, 2049, "mean", true}, {2, 3, 3, 5, 7, "sum", true},
      {1, 3, 17, 19, 63, "sum", false}, {2, 4, 3, 1, 65, "none", true},  {1, 1, 5, 9, 63, "none", true},
      {2, 3, 3, 5, 7, "general", true}, {1, 5, 17, 19, 130, "general", true},
      {1, 1, 2, 4, 20, "general", false}, {1, 8, 2, 3, 9, "general", true}, {1, 8, 2, 3, 70, "mean", true},
      // several channel blocks (32 channels each; above 512 channels, 16 blocks of D / 16)
      {2, 3, 33, 5, 70, "mean", true},  {1, 2, 33, 3, 9, "general", true}, {1, 1, 600, 1, 3, "general", false},
      {1, 2, 600, 2, 3, "none", true},
      // "sum" with M > 3; state sizes that fill whole vector blocks, up to the limit
      {1, 5, 3, 4, 9, "sum", true},     {1, 2, 3, 32, 20, "mean", true}, {1, 3, 2, 256, 9, "general", true},
      {1, 8, 2, 256, 5, "mean", true},
  };
  for (const Case& c : cases) {
    compare_case<double>(c, 1e-10, 1e-9);
    compare_case<float>(c, 1e-4, 1e-3);
  }
  compare_case<float>({2, 3, 17, 19, 63, "mean", true}, 1e-4, 1e-3, /*row_pad=*/5);
  compare_case<double>({2, 3, 3, 5, 70, "general", true}, 1e-10, 1e-9, /*row_pad=*/3);
  for (const char* c : {"sum", "mean", "none", "general"}) finite_difference_case(c);
  determinism_case();
  status_cases();
  empty_sequence_case();
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
