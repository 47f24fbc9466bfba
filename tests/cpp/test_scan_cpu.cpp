// C++ tests of the CPU kernels against the naive transcription of the spec (naive_scan.h) and
// against finite differences, for every coupling mode at odd sizes.
#include <algorithm>
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

// One (Bt, M, R, L) tensor inside a bigger NaN-filled buffer, in one of SeqTensor's layouts:
// - rows (default): an (M, R + 2, Bt, L + 3) buffer permuted to (Bt, M, R), time contiguous, the
//   layout the Python layer passes for a transposed tensor;
// - step-major (`steps`): an (M, Bt, L, R + 3) buffer, each step's R values contiguous, the layout
//   of a model's (M, batch * L, channels) activations.
template <typename T>
struct StridedBuffer {
  int64_t Bt, M, R, L;
  bool steps;
  std::vector<T> data;
  StridedBuffer(int64_t bt, int64_t m, int64_t r, int64_t l, bool step_major = false)
      : Bt(bt), M(m), R(r), L(l), steps(step_major),
        data(step_major ? m * bt * l * (r + 3) : m * (r + 2) * bt * (l + 3), T(std::nan(""))) {}
  int64_t pitch() const { return steps ? R + 3 : L + 3; }
  coupled_scan::SeqTensor<T> rows() {
    if (steps) return {data.data(), L * pitch(), Bt * L * pitch(), 1, pitch()};
    return {data.data(), pitch(), (R + 2) * Bt * pitch(), Bt * pitch()};
  }
  coupled_scan::SeqTensor<const T> const_rows() const {
    if (steps) return {data.data(), L * pitch(), Bt * L * pitch(), 1, pitch()};
    return {data.data(), pitch(), (R + 2) * Bt * pitch(), Bt * pitch()};
  }
  int64_t index(int64_t b, int64_t m, int64_t r, int64_t t) const {
    if (steps) return ((m * Bt + b) * L + t) * pitch() + r;
    return m * (R + 2) * Bt * pitch() + r * Bt * pitch() + b * pitch() + t;
  }
  // Scatter a contiguous (Bt, M, R, L) tensor into the buffer.
  void fill(const Vec& v) {
    int64_t i = 0;
    for (int64_t b = 0; b < Bt; ++b)
      for (int64_t m = 0; m < M; ++m)
        for (int64_t r = 0; r < R; ++r)
          for (int64_t t = 0; t < L; ++t) data[index(b, m, r, t)] = T(v[i++]);
  }
  // The elements gathered into the contiguous (Bt, M, R, L) order.
  Vec gathered() const {
    Vec o;
    for (int64_t b = 0; b < Bt; ++b)
      for (int64_t m = 0; m < M; ++m)
        for (int64_t r = 0; r < R; ++r)
          for (int64_t t = 0; t < L; ++t) o.push_back(double(data[index(b, m, r, t)]));
    return o;
  }
  // Every element outside the tensor is still NaN.
  bool padding_untouched() const {
    std::vector<char> inside(data.size(), 0);
    for (int64_t b = 0; b < Bt; ++b)
      for (int64_t m = 0; m < M; ++m)
        for (int64_t r = 0; r < R; ++r)
          for (int64_t t = 0; t < L; ++t) inside[index(b, m, r, t)] = 1;
    for (size_t i = 0; i < data.size(); ++i)
      if (!inside[i] && !std::isnan(data[i])) return false;
    return true;
  }
};

template <typename T>
static bool all_nan(const std::vector<T>& v) {
  for (T x : v)
    if (!std::isnan(x)) return false;
  return true;
}

template <typename T>
struct KernelResult {
  Vec out, last, checkpoints, du, ddelta, dA, dB, dC, dD, dz, dbias, dW, dinit;
  Status fwd_status, bwd_status;
  // Strided outputs: nothing written outside the rows or to the contiguous pointers, forward / backward.
  bool fwd_rows_only = true, bwd_rows_only = true;
};

// Runs forward and backward of the library on problem p (converted to T, with p.lengths when
// given). Every output buffer starts as NaN, so a slot the library leaves unwritten shows up.
// Without `saved_checkpoints` the backward recomputes the checkpoints itself. With
// `strided_outputs`, out, du, ddelta, dB, dC and dz are written as strided rows (StridedBuffer;
// the contiguous pointers stay set, to NaN buffers) and gathered back into the result. With
// `step_major`, every sequence tensor, inputs and results, is step-major (StridedBuffer's `steps`).
template <typename T>
static KernelResult<T> run_kernel(const naive::Problem& p, CouplingKind kind, double alpha,
                                  const Vec& dout, const Vec& dlast, int threads, int64_t row_pad = 0,
                                  bool saved_checkpoints = true, bool strided_outputs = false,
                                  bool step_major = false) {
  strided_outputs = strided_outputs || step_major;
  const T poison = T(std::nan(""));
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
  f.lengths = p.lengths.empty() ? nullptr : p.lengths.data();
  StridedBuffer<T> u_s(Bt, M, D, L, true), delta_s(Bt, M, D, L, true), B_s(Bt, M, N, L, true),
      C_s(Bt, M, N, L, true), z_s(Bt, M, D, L, true), dout_s(Bt, M, D, L, true);
  if (step_major) {
    u_s.fill(p.u), delta_s.fill(p.delta), B_s.fill(p.B), C_s.fill(p.C), dout_s.fill(dout);
    f.u = u_s.const_rows(), f.delta = delta_s.const_rows(), f.B = B_s.const_rows(), f.C = C_s.const_rows();
    if (!z.empty()) z_s.fill(p.z), f.z = z_s.const_rows();
  }
  std::vector<T> out(Bt * M * D * L, poison), last(Bt * M * D * N, poison),
      ck(Bt * D * coupled_scan::num_chunks(kind, L) * coupled_scan::checkpoint_width(kind, M, N), poison);
  StridedBuffer<T> out_s(Bt, M, D, L, step_major);
  f.out = out.data();
  if (strided_outputs) f.out_rows = out_s.rows();
  f.last_state = last.data();
  f.checkpoints = ck.data();
  f.num_threads = threads;
  KernelResult<T> r;
  r.fwd_status = coupled_scan::forward_cpu(f);
  r.out = strided_outputs ? out_s.gathered() : to_double(out);
  r.last = to_double(last);
  r.checkpoints = to_double(ck);
  if (strided_outputs) r.fwd_rows_only = out_s.padding_untouched() && all_nan(out);

  coupled_scan::BackwardArgs<T> g;
  g.fwd = f;
  g.fwd.out_rows = {};
  g.checkpoints = saved_checkpoints ? ck.data() : nullptr;
  g.dout = step_major ? dout_s.const_rows() : coupled_scan::SeqTensor<const T>{go.data(), M * D * L, D * L, L};
  g.dlast_state = gl.empty() ? nullptr : gl.data();
  std::vector<T> du(Bt * M * D * L, poison), dd(du.size(), poison), dA(A.size(), poison),
      dB(Bt * M * N * L, poison), dC(dB.size(), poison), dD(M * D, poison), dz(du.size(), poison),
      dbias(M * D, poison), dW(M * M, poison), dinit(Bt * M * D * N, poison);
  g.du = du.data(); g.ddelta = dd.data(); g.dA = dA.data(); g.dB = dB.data(); g.dC = dC.data();
  g.dD = dD.data(); g.dz = dz.data(); g.ddelta_bias = dbias.data(); g.dW = dW.data();
  g.dinitial_state = dinit.data();
  StridedBuffer<T> du_s(Bt, M, D, L, step_major), dd_s(Bt, M, D, L, step_major), dB_s(Bt, M, N, L, step_major),
      dC_s(Bt, M, N, L, step_major), dz_s(Bt, M, D, L, step_major);
  const bool strided_dz = strided_outputs && !z.empty();
  if (strided_outputs) {
    g.du_rows = du_s.rows(); g.ddelta_rows = dd_s.rows(); g.dB_rows = dB_s.rows(); g.dC_rows = dC_s.rows();
    if (strided_dz) g.dz_rows = dz_s.rows();
  }
  r.bwd_status = coupled_scan::backward_cpu(g);
  r.du = strided_outputs ? du_s.gathered() : to_double(du);
  r.ddelta = strided_outputs ? dd_s.gathered() : to_double(dd);
  r.dB = strided_outputs ? dB_s.gathered() : to_double(dB);
  r.dC = strided_outputs ? dC_s.gathered() : to_double(dC);
  r.dz = strided_dz ? dz_s.gathered() : to_double(dz);
  r.dA = to_double(dA); r.dD = to_double(dD); r.dbias = to_double(dbias); r.dW = to_double(dW);
  r.dinit = to_double(dinit);
  if (strided_outputs)
    r.bwd_rows_only = du_s.padding_untouched() && dd_s.padding_untouched() && dB_s.padding_untouched() &&
                      dC_s.padding_untouched() && dz_s.padding_untouched() && all_nan(du) && all_nan(dd) &&
                      all_nan(dB) && all_nan(dC) && (!strided_dz || all_nan(dz));
  return r;
}

static CouplingKind kind_of(const std::string& c) {
  if (c == "none") return CouplingKind::kNone;
  if (c == "general") return CouplingKind::kGeneral;
  return CouplingKind::kRankOne;
}

// Status, outputs and every gradient of run_kernel's result r against the naive reference.
template <typename T>
static void compare_with_reference(const std::string& name, const Case& c, const KernelResult<T>& r,
                                   const naive::Grads& ref, double tol_out, double tol_grad) {
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
  compare_with_reference(name, c, r, ref, tol_out, tol_grad);
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

// Bitwise equality across thread counts. The backward runs either every task of the batch in
// parallel (partial sums of the whole batch) or all tasks of one sample per worker (partial sums
// of that sample); which one depends on the threads asked for and the batch, never the bits. One
// thread takes the per-sample path; Bt = 3 takes the batch-wide one with 2 and 3 threads; Bt = 9
// (with lengths, whose steps past a sample's end leave a worker's partial rows of an earlier
// sample in place) the per-sample one with 2 threads (2 workers where the machine has 2 cores)
// and the batch-wide one with 3.
static std::vector<int64_t> random_lengths(int64_t Bt, int64_t L, std::mt19937_64& rng);

static void determinism_case() {
  for (const int64_t Bt : {3, 9}) {
    const Case c{Bt, 3, 40, 19, 150, "general", true};
    std::mt19937_64 rng(5 + Bt);
    naive::Problem p = make_problem(c, rng);
    if (Bt == 9) p.lengths = random_lengths(c.Bt, c.L, rng);
    Vec dout(p.u.size(), 0.0), dlast(c.Bt * c.M * c.D * c.N);
    std::normal_distribution<double> normal(0.0, 1.0);
    for (auto& x : dout) x = normal(rng);
    for (auto& x : dlast) x = normal(rng);
    for (const char* mode : {"general", "mean", "none"}) {
      const CouplingKind kind = kind_of(mode);
      const KernelResult<float> one = run_kernel<float>(p, kind, 1.0 / 3, dout, dlast, 1);
      for (const int threads : {2, 3}) {
        const KernelResult<float> more = run_kernel<float>(p, kind, 1.0 / 3, dout, dlast, threads);
        const bool same = one.out == more.out && one.last == more.last && one.dB == more.dB &&
                          one.dC == more.dC && one.dA == more.dA && one.dW == more.dW && one.dbias == more.dbias &&
                          one.du == more.du && one.ddelta == more.ddelta && one.dD == more.dD &&
                          one.dz == more.dz && one.dinit == more.dinit;
        check(same, std::string("backward bitwise identical with 1 and ") + std::to_string(threads) +
                        " threads (" + mode + ", Bt=" + std::to_string(Bt) + ")");
      }
    }
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

// ---- per-sample lengths ----

// Random lengths in [0, L] that include 0, 1 and L at random positions (batch >= 3).
static std::vector<int64_t> random_lengths(int64_t Bt, int64_t L, std::mt19937_64& rng) {
  std::uniform_int_distribution<int64_t> any(0, L);
  std::vector<int64_t> len(Bt);
  for (auto& x : len) x = any(rng);
  len[0] = 0;
  len[1] = L < 1 ? 0 : 1;
  len[2] = L;
  std::shuffle(len.begin(), len.end(), rng);
  return len;
}

// Apply fn(index) to every element at steps >= lengths[b] of a (Bt, M, R, L) array.
template <typename Fn>
static void for_padded_steps(const naive::Problem& p, int64_t R, const Fn& fn) {
  for (int64_t b = 0; b < p.Bt; ++b)
    for (int64_t mr = 0; mr < p.M * R; ++mr)
      for (int64_t t = naive::length_of(p, b); t < p.L; ++t) fn((b * p.M * R + mr) * p.L + t);
}

// Sample b alone, its sequences cut to its length.
static naive::Problem sample_alone(const naive::Problem& p, int64_t b) {
  const int64_t Lb = naive::length_of(p, b);
  naive::Problem q = p;
  q.Bt = 1;
  q.L = Lb;
  q.lengths.clear();
  auto cut = [&](const Vec& v, int64_t R) {
    Vec o;
    if (v.empty()) return o;
    for (int64_t mr = 0; mr < p.M * R; ++mr)
      for (int64_t t = 0; t < Lb; ++t) o.push_back(v[(b * p.M * R + mr) * p.L + t]);
    return o;
  };
  auto state_rows = [&](const Vec& v) {
    const int64_t n = p.M * p.D * p.N;
    return v.empty() ? Vec() : Vec(v.begin() + b * n, v.begin() + (b + 1) * n);
  };
  q.u = cut(p.u, p.D);
  q.delta = cut(p.delta, p.D);
  q.B = cut(p.B, p.N);
  q.C = cut(p.C, p.N);
  q.z = cut(p.z, p.D);
  q.init = state_rows(p.init);
  return q;
}

// Sample b's part of a batched (Bt, M, R, L) array, steps < its length (L_out = that length).
static Vec sample_steps(const naive::Problem& p, const Vec& v, int64_t R, int64_t b) {
  Vec o;
  for (int64_t mr = 0; mr < p.M * R; ++mr)
    for (int64_t t = 0; t < naive::length_of(p, b); ++t) o.push_back(v[(b * p.M * R + mr) * p.L + t]);
  return o;
}

template <typename T>
static void lengths_case(const Case& c, double tol_out, double tol_grad) {
  std::mt19937_64 rng(4321 + c.Bt * 7 + c.M * 131 + c.D * 17 + c.N * 3 + c.L * 1009);
  naive::Problem p = make_problem(c, rng);
  p.lengths = random_lengths(c.Bt, c.L, rng);
  Vec dout, dlast;
  random_upstream(p, c.with_optional, rng, dout, dlast);
  // Inputs past a sample's length are NaN: reading any of them would show in the results.
  const double nan = std::nan("");
  for_padded_steps(p, c.D, [&](int64_t i) {
    p.u[i] = p.delta[i] = dout[i] = nan;
    if (!p.z.empty()) p.z[i] = nan;
  });
  for_padded_steps(p, c.N, [&](int64_t i) { p.B[i] = p.C[i] = nan; });

  const naive::Grads ref = naive::run(p, dout, dlast);
  const CouplingKind kind = kind_of(c.coupling);
  const double alpha = c.coupling == "mean" ? 1.0 / c.M : 1.0;
  const KernelResult<T> r = run_kernel<T>(p, kind, alpha, dout, dlast, 2);
  std::string name = std::string(sizeof(T) == 8 ? "f64" : "f32") + " lengths Bt=" + std::to_string(c.Bt) +
                     " M=" + std::to_string(c.M) + " D=" + std::to_string(c.D) + " N=" + std::to_string(c.N) +
                     " L=" + std::to_string(c.L) + " " + c.coupling + (c.with_optional ? " +opt" : "") + " (";
  for (int64_t x : p.lengths) name += std::to_string(x) + " ";
  name += ")";
  check(r.fwd_status == Status::kOk && r.bwd_status == Status::kOk, name + " status");

  // Against the naive transcription with the same lengths.
  auto cmp = [&](const char* what, const Vec& x, const Vec& ref_v, double tol) {
    const double e = rel_err(x, ref_v);
    check(e <= tol, name + " " + what + " rel err " + std::to_string(e));
  };
  cmp("out", r.out, ref.out, tol_out);
  cmp("last_state", r.last, ref.last, tol_out);
  cmp("du", r.du, ref.du, tol_grad);
  cmp("ddelta", r.ddelta, ref.ddelta, tol_grad);
  cmp("dA", r.dA, ref.dA, tol_grad);
  cmp("dB", r.dB, ref.dB, tol_grad);
  cmp("dC", r.dC, ref.dC, tol_grad);
  cmp("dD", r.dD, ref.dD, tol_grad);
  cmp("ddelta_bias", r.dbias, ref.dbias, tol_grad);
  cmp("dinit", r.dinit, ref.dinit, tol_grad);
  if (c.with_optional) cmp("dz", r.dz, ref.dz, tol_grad);
  if (c.coupling == "general") cmp("dW", r.dW, ref.dW, tol_grad);

  // Exact zeros past each sample's length.
  bool zeros = true;
  for_padded_steps(p, c.D, [&](int64_t i) {
    zeros = zeros && r.out[i] == 0.0 && r.du[i] == 0.0 && r.ddelta[i] == 0.0 && (!c.with_optional || r.dz[i] == 0.0);
  });
  for_padded_steps(p, c.N, [&](int64_t i) { zeros = zeros && r.dB[i] == 0.0 && r.dC[i] == 0.0; });
  check(zeros, name + " out, du, ddelta, dz, dB, dC exactly 0 past each length");
  bool written = true;
  for (double x : r.checkpoints) written = written && !std::isnan(x);
  check(written, name + " every checkpoint slot written");

  // The backward that recomputes its checkpoints gives the same bits.
  const KernelResult<T> again = run_kernel<T>(p, kind, alpha, dout, dlast, 3, 0, /*saved_checkpoints=*/false);
  check(again.du == r.du && again.ddelta == r.ddelta && again.dA == r.dA && again.dB == r.dB && again.dC == r.dC &&
            again.dinit == r.dinit && again.dbias == r.dbias && again.dD == r.dD && again.dW == r.dW,
        name + " recomputed checkpoints give identical gradients");

  // Each sample run alone on its cut inputs: the same bits for the per-sample results, the same
  // sums for the parameter gradients.
  const int64_t S = c.M * c.D * c.N;
  Vec dA(r.dA.size(), 0.0), dD(r.dD.size(), 0.0), dbias(r.dbias.size(), 0.0), dW(r.dW.size(), 0.0);
  bool same = true;
  for (int64_t b = 0; b < c.Bt; ++b) {
    const naive::Problem q = sample_alone(p, b);
    const Vec qdout = sample_steps(p, dout, c.D, b);
    const Vec qdlast = dlast.empty() ? Vec() : Vec(dlast.begin() + b * S, dlast.begin() + (b + 1) * S);
    const KernelResult<T> one = run_kernel<T>(q, kind, alpha, qdout, qdlast, 1);
    same = same && one.fwd_status == Status::kOk && one.bwd_status == Status::kOk;
    same = same && one.out == sample_steps(p, r.out, c.D, b) && one.du == sample_steps(p, r.du, c.D, b) &&
           one.ddelta == sample_steps(p, r.ddelta, c.D, b) && one.dB == sample_steps(p, r.dB, c.N, b) &&
           one.dC == sample_steps(p, r.dC, c.N, b);
    if (c.with_optional) same = same && one.dz == sample_steps(p, r.dz, c.D, b);
    same = same && Vec(r.last.begin() + b * S, r.last.begin() + (b + 1) * S) == one.last &&
           Vec(r.dinit.begin() + b * S, r.dinit.begin() + (b + 1) * S) == one.dinit;
    for (size_t i = 0; i < dA.size(); ++i) dA[i] += one.dA[i];
    for (size_t i = 0; i < dD.size(); ++i) dD[i] += one.dD[i], dbias[i] += one.dbias[i];
    for (size_t i = 0; i < dW.size(); ++i) dW[i] += one.dW[i];
  }
  check(same, name + " out, last_state, du, ddelta, dz, dB, dC, dinit equal each sample run alone");
  const double tol_sum = sizeof(T) == 8 ? 1e-12 : 1e-5;
  cmp("dA vs samples alone", r.dA, dA, tol_sum);
  cmp("dD vs samples alone", r.dD, dD, tol_sum);
  cmp("ddelta_bias vs samples alone", r.dbias, dbias, tol_sum);
  if (c.coupling == "general") cmp("dW vs samples alone", r.dW, dW, tol_sum);
}

static void lengths_status_cases() {
  const Case c{3, 2, 2, 3, 5, "general", false};
  std::mt19937_64 rng(17);
  const naive::Problem p = make_problem(c, rng);
  std::vector<double> out(p.u.size());
  const InputPointers<double> x{p.u.data(), p.delta.data(), p.A.data(), p.B.data(), p.C.data(), nullptr,
                                nullptr, nullptr, p.W.data(), nullptr};
  coupled_scan::ForwardArgs<double> f = forward_args_for(p, x, c.L, CouplingKind::kGeneral, 1.0);
  f.out = out.data();
  const int64_t good[] = {0, 5, 2}, negative[] = {1, -1, 2}, too_long[] = {1, 6, 2};
  f.lengths = good;
  check(coupled_scan::forward_cpu(f) == Status::kOk, "lengths in [0, L] accepted");
  f.lengths = negative;
  check(coupled_scan::forward_cpu(f) == Status::kInvalidSize, "negative length rejected");
  f.lengths = too_long;
  check(coupled_scan::forward_cpu(f) == Status::kInvalidSize, "length above L rejected");
  coupled_scan::BackwardArgs<double> g;
  g.fwd = f;
  check(coupled_scan::backward_cpu(g) == Status::kInvalidSize, "backward: length above L rejected");
  f.size.channels = 0;
  check(coupled_scan::forward_cpu(f) == Status::kInvalidSize, "length above L rejected when D = 0");
}

// ---- empty sizes ----

// Every combination of batch, D and L at zero (N >= 1 always): every non-empty output is exact
// (zeros, or d initial_state = d last_state and last_state = initial_state when L = 0).
static void empty_sizes_case(const std::string& coupling, bool with_lengths, bool with_states) {
  const CouplingKind kind = kind_of(coupling);
  const int64_t M = 3, N = 4;
  for (int64_t Bt : {0, 2})
    for (int64_t D : {0, 3})
      for (int64_t L : {0, 5}) {
        if (Bt > 0 && D > 0 && L > 0) continue;
        const std::string name = coupling + " Bt=" + std::to_string(Bt) + " D=" + std::to_string(D) + " L=" +
                                 std::to_string(L) + (with_lengths ? " +lengths" : "") +
                                 (with_states ? " +states" : "");
        std::mt19937_64 rng(3);
        std::normal_distribution<double> normal(0.0, 1.0);
        auto random = [&](int64_t n) {
          std::vector<double> v(n);
          for (auto& x : v) x = normal(rng);
          return v;
        };
        const double nan = std::nan("");
        const int64_t seq = Bt * M * D * L, bc = Bt * M * N * L, states = Bt * M * D * N;
        std::vector<double> u = random(seq), delta = random(seq), B = random(bc), C = random(bc), A = random(M * D * N),
                            W = random(M * M), init = random(states), dout = random(seq), dlast = random(states);
        std::vector<double> out(seq, nan), last(states, nan), du(seq, nan), dd(seq, nan), dA(M * D * N, nan),
            dB(bc, nan), dC(bc, nan), dD(M * D, nan), dbias(M * D, nan), dW(M * M, nan), dinit(states, nan);
        std::vector<int64_t> lengths(Bt);
        for (int64_t b = 0; b < Bt; ++b) lengths[b] = b % 2 ? L : 0;
        coupled_scan::ForwardArgs<double> f;
        f.size = {Bt, M, D, N, L};
        f.u = {u.data(), M * D * L, D * L, L};
        f.delta = {delta.data(), M * D * L, D * L, L};
        f.A = A.data();
        f.B = {B.data(), M * N * L, N * L, L};
        f.C = {C.data(), M * N * L, N * L, L};
        f.coupling = kind;
        f.alpha = coupling == "mean" ? 1.0 / M : 1.0;
        f.W = W.data();
        f.initial_state = with_states ? init.data() : nullptr;
        f.out = out.data();
        f.last_state = last.data();
        f.lengths = with_lengths ? lengths.data() : nullptr;
        f.num_threads = 2;
        check(coupled_scan::forward_cpu(f) == Status::kOk, name + " forward status");
        coupled_scan::BackwardArgs<double> g;
        g.fwd = f;
        g.dout = {dout.data(), M * D * L, D * L, L};
        g.dlast_state = with_states ? dlast.data() : nullptr;
        g.du = du.data(); g.ddelta = dd.data(); g.dA = dA.data(); g.dB = dB.data(); g.dC = dC.data();
        g.dD = dD.data(); g.ddelta_bias = dbias.data(); g.dW = dW.data(); g.dinitial_state = dinit.data();
        check(coupled_scan::backward_cpu(g) == Status::kOk, name + " backward status");
        auto all_zero = [](const std::vector<double>& v) {
          for (double x : v)
            if (x != 0.0) return false;
          return true;
        };
        const std::vector<double> zero_states(states, 0.0);
        check(last == (with_states ? init : zero_states), name + " last_state is the initial state");
        check(dinit == (with_states ? dlast : zero_states), name + " d initial_state is d last_state");
        check(all_zero(dA) && all_zero(dB) && all_zero(dC) && all_zero(dD) && all_zero(dbias) && all_zero(dW),
              name + " dA, dB, dC, dD, d delta_bias, dW exactly 0");
      }
}


// ---- strided sequence outputs (out_rows, du_rows, ...) ----

// Equal element by element, a NaN matching a NaN (a result the library leaves unwritten in both runs).
static bool same_bits(const Vec& a, const Vec& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (!(a[i] == b[i] || (std::isnan(a[i]) && std::isnan(b[i])))) return false;
  return true;
}

// Forward and backward with contiguous outputs, then again with out, du, ddelta, dB, dC and dz as
// strided rows: the same bits, nothing written outside the rows or to the contiguous pointers.
template <typename T>
static void strided_outputs_case(const Case& c, bool with_lengths) {
  std::mt19937_64 rng(555 + c.M * 131 + c.N * 3 + c.L * 1009 + with_lengths);
  naive::Problem p = make_problem(c, rng);
  if (with_lengths) p.lengths = random_lengths(c.Bt, c.L, rng);
  Vec dout, dlast;
  random_upstream(p, c.with_optional, rng, dout, dlast);
  const CouplingKind kind = kind_of(c.coupling);
  const double alpha = c.coupling == "mean" ? 1.0 / c.M : 1.0;
  const KernelResult<T> ref = run_kernel<T>(p, kind, alpha, dout, dlast, 2);
  const KernelResult<T> got = run_kernel<T>(p, kind, alpha, dout, dlast, 3, 0, true, /*strided_outputs=*/true);
  const std::string name = std::string(sizeof(T) == 8 ? "f64" : "f32") + " strided outputs M=" +
                           std::to_string(c.M) + " N=" + std::to_string(c.N) + " L=" + std::to_string(c.L) + " " +
                           c.coupling + (with_lengths ? " +lengths" : "");
  check(ref.fwd_status == Status::kOk && ref.bwd_status == Status::kOk, name + " contiguous status");
  check(got.fwd_status == Status::kOk && got.bwd_status == Status::kOk, name + " strided status");
  check(got.out == ref.out && got.last == ref.last && got.checkpoints == ref.checkpoints,
        name + " out, last_state, checkpoints identical bits");
  check(got.du == ref.du && got.ddelta == ref.ddelta && got.dB == ref.dB && got.dC == ref.dC &&
            (!c.with_optional || got.dz == ref.dz),
        name + " du, ddelta, dB, dC, dz identical bits");
  check(same_bits(got.dA, ref.dA) && same_bits(got.dinit, ref.dinit) && same_bits(got.dW, ref.dW) &&
            same_bits(got.dD, ref.dD) && same_bits(got.dbias, ref.dbias),
        name + " dA, dinit, dW, dD, ddelta_bias identical bits");
  check(got.fwd_rows_only, name + " forward writes only the out rows");
  check(got.bwd_rows_only, name + " backward writes only the rows");
}

// Every sequence tensor step-major (StridedBuffer's `steps`, inputs and results): against the
// naive reference, with and without lengths (inputs past them NaN, never read); nothing written
// outside the tensors or to the contiguous pointers; the same bits with 1 and 3 threads.
template <typename T>
static void step_major_case(const Case& c, bool with_lengths, double tol_out, double tol_grad) {
  std::mt19937_64 rng(777 + c.Bt * 7 + c.M * 131 + c.D * 17 + c.N * 3 + c.L * 1009 + with_lengths);
  naive::Problem p = make_problem(c, rng);
  Vec dout, dlast;
  random_upstream(p, c.with_optional, rng, dout, dlast);
  if (with_lengths) {
    p.lengths = random_lengths(c.Bt, c.L, rng);
    const double nan = std::nan("");
    for_padded_steps(p, c.D, [&](int64_t i) {
      p.u[i] = p.delta[i] = dout[i] = nan;
      if (!p.z.empty()) p.z[i] = nan;
    });
    for_padded_steps(p, c.N, [&](int64_t i) { p.B[i] = p.C[i] = nan; });
  }
  const naive::Grads ref = naive::run(p, dout, dlast);
  const CouplingKind kind = kind_of(c.coupling);
  const double alpha = c.coupling == "mean" ? 1.0 / c.M : 1.0;
  const KernelResult<T> r = run_kernel<T>(p, kind, alpha, dout, dlast, 1, 0, true, false, /*step_major=*/true);
  const KernelResult<T> r3 = run_kernel<T>(p, kind, alpha, dout, dlast, 3, 0, true, false, /*step_major=*/true);
  char name[160];
  std::snprintf(name, sizeof(name), "%s step-major Bt=%lld M=%lld D=%lld N=%lld L=%lld %s%s%s",
                sizeof(T) == 8 ? "f64" : "f32", (long long)c.Bt, (long long)c.M, (long long)c.D,
                (long long)c.N, (long long)c.L, c.coupling.c_str(), c.with_optional ? " +opt" : "",
                with_lengths ? " +lengths" : "");
  compare_with_reference(name, c, r, ref, tol_out, tol_grad);
  check(r.fwd_rows_only && r.bwd_rows_only, std::string(name) + " writes only the step-major results");
  check(same_bits(r.out, r3.out) && same_bits(r.du, r3.du) && same_bits(r.ddelta, r3.ddelta) &&
            same_bits(r.dA, r3.dA) && same_bits(r.dB, r3.dB) && same_bits(r.dC, r3.dC) && same_bits(r.dz, r3.dz) &&
            same_bits(r.dD, r3.dD) && same_bits(r.dbias, r3.dbias) && same_bits(r.dW, r3.dW) &&
            same_bits(r.dinit, r3.dinit),
        std::string(name) + " the same bits with 1 and 3 threads");
}

// Layout rules (check_args.h): a group's tensors follow its first tensor's layout, and step-major
// results need their strided layouts.
static void layout_status_cases() {
  const Case c{1, 2, 3, 4, 5, "mean", true};
  std::mt19937_64 rng(11);
  naive::Problem p = make_problem(c, rng);
  StridedBuffer<float> u(1, 2, 3, 5, true), delta(1, 2, 3, 5, true), B(1, 2, 4, 5, true), C(1, 2, 4, 5, true),
      out(1, 2, 3, 5, true), row_delta(1, 2, 3, 5, false);
  u.fill(p.u), delta.fill(p.delta), B.fill(p.B), C.fill(p.C), row_delta.fill(p.delta);
  std::vector<float> A = cast<float>(p.A), contiguous_out(30);
  coupled_scan::ForwardArgs<float> f;
  f.size = {1, 2, 3, 4, 5};
  f.u = u.const_rows(), f.delta = delta.const_rows(), f.B = B.const_rows(), f.C = C.const_rows();
  f.A = A.data();
  f.out_rows = out.rows();
  check(coupled_scan::forward_cpu(f) == Status::kOk, "step-major call is ok");
  auto g = f; g.delta = row_delta.const_rows();
  check(coupled_scan::forward_cpu(g) == Status::kInvalidArgument, "delta row-major with u step-major rejected");
  g = f; g.C = {C.data.data(), 5 * 7, 7, 2, 7};
  check(coupled_scan::forward_cpu(g) == Status::kInvalidArgument, "C with stride_row 2 in a step-major group rejected");
  g = f; g.out_rows = {}, g.out = contiguous_out.data();
  check(coupled_scan::forward_cpu(g) == Status::kInvalidArgument, "step-major u with a contiguous out rejected");
  g = f; g.out_rows = {contiguous_out.data(), 15, 5, 5, 1};
  check(coupled_scan::forward_cpu(g) == Status::kInvalidArgument, "step-major u with a row-major out rejected");
  coupled_scan::BackwardArgs<float> b;
  std::vector<float> du(30), dd(30), dA(24), dB(40), dC(40);
  b.fwd = f;
  b.dout = u.const_rows();
  b.du = du.data(), b.ddelta = dd.data(), b.dA = dA.data(), b.dB = dB.data(), b.dC = dC.data();
  check(coupled_scan::backward_cpu(b) == Status::kInvalidArgument, "step-major gradients without their layouts rejected");
  check(std::string(coupled_scan::status_string(Status::kInvalidArgument)).find("layout") != std::string::npos,
        "the status string names the layout");
  // No channel (D = 0): dB, dC of step-major B, C are zero at every element.
  StridedBuffer<float> dB_s(1, 2, 4, 5, true), dC_s(1, 2, 4, 5, true);
  coupled_scan::BackwardArgs<float> e;
  e.fwd = f;
  e.fwd.size.channels = 0;
  e.fwd.u = {}, e.fwd.delta = {}, e.fwd.out_rows = {};
  e.dA = dA.data();
  e.dB_rows = dB_s.rows(), e.dC_rows = dC_s.rows();
  bool zeros = coupled_scan::backward_cpu(e) == Status::kOk;
  for (double v : dB_s.gathered()) zeros = zeros && v == 0.0;
  for (double v : dC_s.gathered()) zeros = zeros && v == 0.0;
  check(zeros && dB_s.padding_untouched() && dC_s.padding_untouched(), "D = 0: step-major dB, dC all zero");
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
      // every group size the kernels fix at compile time (1 to 4) and one above
      {2, 4, 9, 11, 33, "mean", true},  {2, 4, 9, 11, 33, "general", true}, {1, 2, 9, 11, 33, "sum", false},
      {1, 6, 9, 11, 33, "general", false},
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
  for (const char* c : {"sum", "mean", "none", "general"})
    for (bool with_lengths : {false, true})
      for (bool with_states : {false, true}) empty_sizes_case(c, with_lengths, with_states);
  // Per-sample lengths: every coupling, M = 1 and M > 3, odd L, N off the vector width, several
  // time chunks and channel blocks.
  const std::vector<Case> length_cases = {
      {3, 2, 3, 5, 1, "mean", true},     {5, 3, 3, 5, 7, "sum", true},      {4, 5, 3, 4, 9, "sum", false},
      {4, 1, 2, 3, 63, "mean", true},    {4, 5, 17, 19, 130, "mean", true}, {4, 4, 3, 7, 65, "none", true},
      {3, 1, 5, 9, 63, "none", false},   {4, 5, 3, 5, 70, "general", true}, {3, 1, 2, 3, 7, "general", true},
      {3, 2, 33, 3, 9, "general", true}, {3, 2, 2, 3, 2049, "mean", true},  {3, 2, 2, 3, 2049, "general", true},
  };
  for (const Case& c : length_cases) {
    lengths_case<double>(c, 1e-10, 1e-9);
    lengths_case<float>(c, 1e-4, 1e-3);
  }
  lengths_status_cases();
  // Strided sequence outputs: every coupling, M = 1 and 4, odd N and L (two time chunks).
  for (const char* coupling : {"sum", "mean", "none", "general"})
    for (int64_t M : {1, 4})
      for (bool with_lengths : {false, true}) {
        const Case c{3, M, 3, 5, 67, coupling, true};
        strided_outputs_case<float>(c, with_lengths);
        strided_outputs_case<double>(c, with_lengths);
      }
  strided_outputs_case<float>({3, 4, 2, 7, 9, "general", false}, true);  // without z, D, states
  // Step-major sequence tensors: every coupling, M = 1 and > 3, L = 2 to 2049 (one to 33 chunks),
  // N off the vector width, D across two channel blocks and one below a vector.
  const std::vector<Case> step_major_cases = {
      {2, 3, 5, 7, 2, "mean", true},     {1, 1, 3, 5, 7, "mean", false},     {2, 3, 17, 19, 63, "none", true},
      {2, 5, 33, 9, 70, "mean", true},   {1, 2, 3, 3, 2049, "general", true}, {2, 4, 9, 11, 33, "sum", true},
      {1, 6, 40, 5, 67, "general", true}, {3, 1, 2, 16, 65, "none", false},
  };
  for (const Case& c : step_major_cases)
    for (bool with_lengths : {false, true}) {
      step_major_case<double>(c, with_lengths, 1e-10, 1e-9);
      step_major_case<float>(c, with_lengths, 1e-4, 1e-3);
    }
  layout_status_cases();
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
