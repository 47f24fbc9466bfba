// C++ tests of the fused depthwise causal conv + SiLU (coupled_scan/causal_conv.h) against a naive
// float64 transcription of its formula, a finite-difference spot check, and its error statuses; in
// both layouts: (channels, rows, length) and step-major (G, rows, length, channels / G).
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "coupled_scan/causal_conv.h"
#include "test_support.h"

using coupled_scan::CausalConvArgs;
using coupled_scan::CausalConvBackwardArgs;
using coupled_scan::Status;

namespace {

struct ConvSize {
  int64_t channels, rows, length, width;
  bool with_bias;
  int64_t groups = 0;  // CausalConvArgs::step_major_groups
};

// Where element (channel c, row r, step t) lies in a sequence tensor of size s.
int64_t seq_index(const ConvSize& s, int64_t c, int64_t r, int64_t t) {
  if (s.groups == 0) return (c * s.rows + r) * s.length + t;
  const int64_t per_group = s.channels / s.groups, g = c / per_group;
  return ((g * s.rows + r) * s.length + t) * per_group + c % per_group;
}

// Inputs of one problem in float64, laid out as the API takes them.
struct ConvProblem {
  ConvSize s;
  Vec x, weight, bias, dy;  // bias empty without bias
};

struct ConvGrads {
  Vec y, dx, dweight, dbias;
  Vec dweight_scale, dbias_scale;  // sums of |term| of each dweight, dbias sum
};

ConvProblem random_problem(const ConvSize& s, std::mt19937_64& rng) {
  std::normal_distribution<double> normal(0.0, 1.0);
  auto random = [&](int64_t n, double scale) {
    Vec v(n);
    for (auto& e : v) e = scale * normal(rng);
    return v;
  };
  const int64_t seq = s.channels * s.rows * s.length;
  ConvProblem p{s, random(seq, 1.0), random(s.channels * s.width, 0.5), Vec(), random(seq, 1.0)};
  if (s.with_bias) p.bias = random(s.channels, 0.5);
  return p;
}

double sigmoid(double v) { return 1.0 / (1.0 + std::exp(-v)); }

// Straight from the formula: pre[t] = bias + sum_j w[j] x[t - (k - 1) + j] (x = 0 before t = 0),
// y = silu(pre); the gradients by the chain rule through silu'(p) = s + p s (1 - s).
ConvGrads naive_conv(const ConvProblem& p) {
  const ConvSize& s = p.s;
  const int64_t L = s.length, k = s.width;
  ConvGrads g;
  g.y.assign(p.x.size(), 0.0);
  g.dx.assign(p.x.size(), 0.0);
  g.dweight.assign(s.channels * k, 0.0);
  g.dbias.assign(s.channels, 0.0);
  g.dweight_scale.assign(s.channels * k, 0.0);
  g.dbias_scale.assign(s.channels, 0.0);
  for (int64_t c = 0; c < s.channels; ++c)
    for (int64_t r = 0; r < s.rows; ++r) {
      auto at = [&](int64_t t) { return seq_index(s, c, r, t); };
      for (int64_t t = 0; t < L; ++t) {
        double pre = p.bias.empty() ? 0.0 : p.bias[c];
        for (int64_t j = 0; j < k; ++j) {
          const int64_t i = t - (k - 1) + j;
          if (i >= 0) pre += p.weight[c * k + j] * p.x[at(i)];
        }
        const double sg = sigmoid(pre);
        g.y[at(t)] = pre * sg;
        const double dpre = p.dy[at(t)] * (sg + pre * sg * (1.0 - sg));
        g.dbias[c] += dpre;
        g.dbias_scale[c] += std::fabs(dpre);
        for (int64_t j = 0; j < k; ++j) {
          const int64_t i = t - (k - 1) + j;
          if (i < 0) continue;
          g.dweight[c * k + j] += dpre * p.x[at(i)];
          g.dweight_scale[c * k + j] += std::fabs(dpre * p.x[at(i)]);
          g.dx[at(i)] += dpre * p.weight[c * k + j];
        }
      }
    }
  return g;
}

template <typename T>
struct ConvRun {
  Status fwd, bwd;
  Vec y, dx, dweight, dbias;
};

// The library on problem p in precision T. Every output starts as NaN so an unwritten value shows.
template <typename T>
ConvRun<T> run_library(const ConvProblem& p, int threads) {
  const T nan = T(std::nan(""));
  const ConvSize& s = p.s;
  std::vector<T> x = cast<T>(p.x), w = cast<T>(p.weight), b = cast<T>(p.bias), dy = cast<T>(p.dy);
  std::vector<T> y(x.size(), nan), dx(x.size(), nan), dw(w.size(), nan), db(s.channels, nan);
  CausalConvArgs<T> a;
  a.channels = s.channels;
  a.rows = s.rows;
  a.length = s.length;
  a.width = s.width;
  a.x = x.data();
  a.weight = w.data();
  a.bias = s.with_bias ? b.data() : nullptr;
  a.y = y.data();
  a.num_threads = threads;
  a.step_major_groups = s.groups;
  ConvRun<T> r;
  r.fwd = coupled_scan::causal_conv_silu_forward_cpu(a);
  CausalConvBackwardArgs<T> g;
  g.fwd = a;
  g.fwd.y = nullptr;  // ignored by the backward
  g.dy = dy.data();
  g.dx = dx.data();
  g.dweight = dw.data();
  g.dbias = s.with_bias ? db.data() : nullptr;
  r.bwd = coupled_scan::causal_conv_silu_backward_cpu(g);
  r.y = to_double(y);
  r.dx = to_double(dx);
  r.dweight = to_double(dw);
  if (s.with_bias) r.dbias = to_double(db);
  return r;
}

std::string size_name(const ConvSize& s) {
  return "C=" + std::to_string(s.channels) + " R=" + std::to_string(s.rows) + " L=" + std::to_string(s.length) +
         " k=" + std::to_string(s.width) + (s.with_bias ? " +bias" : " no bias") +
         (s.groups ? " step-major G=" + std::to_string(s.groups) : "");
}

template <typename T>
void compare_case(const ConvSize& s, double tol_y, double tol_grad) {
  std::mt19937_64 rng(77 + s.channels * 13 + s.rows * 101 + s.length * 7 + s.width * 1009 + s.with_bias +
                      s.groups * 100003);
  const ConvProblem p = random_problem(s, rng);
  const ConvGrads ref = naive_conv(p);
  const std::string name = std::string(sizeof(T) == 8 ? "f64 " : "f32 ") + size_name(s);
  const ConvRun<T> one = run_library<T>(p, 1);
  check(one.fwd == Status::kOk && one.bwd == Status::kOk, name + " status");
  auto cmp = [&](const char* what, double e, double tol) {
    check(e <= tol, name + " " + what + " rel err " + std::to_string(e));
  };
  cmp("y", rel_err(one.y, ref.y), tol_y);
  cmp("dx", rel_err(one.dx, ref.dx), tol_grad);
  // The parameter gradients are sums over rows and steps: their error is taken against the size of
  // the terms they add up (scaled_err with the sum of |terms|). A sum that nearly cancels carries
  // the rounding of its terms, whatever the order of the additions, so against its own small value
  // the check would pass or fail by chance.
  cmp("dweight", scaled_err(one.dweight, ref.dweight, ref.dweight_scale), tol_grad);
  if (s.with_bias) cmp("dbias", scaled_err(one.dbias, ref.dbias, ref.dbias_scale), tol_grad);
  // Deterministic: the same bits with 3 threads.
  const ConvRun<T> three = run_library<T>(p, 3);
  check(three.fwd == Status::kOk && three.bwd == Status::kOk && three.y == one.y && three.dx == one.dx &&
            three.dweight == one.dweight && three.dbias == one.dbias,
        name + " identical bits with 1 and 3 threads");
}

// Central differences of loss = <y, dy> of the library's float64 forward at a few entries of x,
// weight and bias, against its backward.
void finite_difference_case(const ConvSize& s) {
  std::mt19937_64 rng(2024);
  const ConvProblem p = random_problem(s, rng);
  const ConvRun<double> r = run_library<double>(p, 1);
  auto loss = [&](const ConvProblem& q) {
    const ConvRun<double> k = run_library<double>(q, 1);
    double sum = 0;
    for (size_t i = 0; i < q.dy.size(); ++i) sum += k.y[i] * q.dy[i];
    return sum;
  };
  struct Param { const char* name; Vec ConvProblem::*field; const Vec ConvRun<double>::*grad; };
  const Param params[] = {{"x", &ConvProblem::x, &ConvRun<double>::dx},
                          {"weight", &ConvProblem::weight, &ConvRun<double>::dweight},
                          {"bias", &ConvProblem::bias, &ConvRun<double>::dbias}};
  for (const Param& prm : params) {
    const Vec& values = p.*(prm.field);
    for (size_t i = 0; i < values.size(); i += values.size() / 5 + 1) {
      ConvProblem hi = p, lo = p;
      const double eps = 1e-6;
      (hi.*(prm.field))[i] += eps;
      (lo.*(prm.field))[i] -= eps;
      const double fd = (loss(hi) - loss(lo)) / (2 * eps);
      const double an = (r.*(prm.grad))[i];
      check(std::fabs(fd - an) <= 1e-6 * (1.0 + std::fabs(fd)),
            "finite difference d" + std::string(prm.name) + "[" + std::to_string(i) + "] " + size_name(s) +
                ": analytic " + std::to_string(an) + " vs numeric " + std::to_string(fd));
    }
  }
}

bool all_nan(const std::vector<float>& v) {
  for (float e : v)
    if (!std::isnan(e)) return false;
  return true;
}

// Each rejected call returns its status and writes nothing.
void status_cases() {
  const float nan = std::nan("");
  const int64_t C = 2, R = 3, L = 5, k = 4;
  std::mt19937_64 rng(9);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  auto random = [&](int64_t n) {
    std::vector<float> v(n);
    for (auto& e : v) e = normal(rng);
    return v;
  };
  std::vector<float> x = random(C * R * L), w = random(C * k), b = random(C), dy = random(C * R * L);
  std::vector<float> y, dx, dw, db;
  auto poison = [&] {
    y.assign(C * R * L, nan);
    dx.assign(C * R * L, nan);
    dw.assign(C * k, nan);
    db.assign(C, nan);
  };
  poison();  // the buffers exist before their pointers are taken
  CausalConvArgs<float> good;
  good.channels = C;
  good.rows = R;
  good.length = L;
  good.width = k;
  good.x = x.data();
  good.weight = w.data();
  good.bias = b.data();
  good.num_threads = 1;
  auto forward = [&](CausalConvArgs<float> a, Status want, const std::string& what) {
    poison();
    if (a.y) a.y = y.data();
    check(coupled_scan::causal_conv_silu_forward_cpu(a) == want && all_nan(y), "forward: " + what);
  };
  auto backward = [&](CausalConvBackwardArgs<float> g, Status want, const std::string& what) {
    poison();
    if (g.dx) g.dx = dx.data();
    if (g.dweight) g.dweight = dw.data();
    if (g.dbias) g.dbias = db.data();
    check(coupled_scan::causal_conv_silu_backward_cpu(g) == want && all_nan(dx) && all_nan(dw) && all_nan(db),
          "backward: " + what);
  };
  CausalConvArgs<float> fa = good;
  fa.y = y.data();
  CausalConvBackwardArgs<float> ga;
  ga.fwd = good;
  ga.dy = dy.data();
  ga.dx = dx.data();
  ga.dweight = dw.data();
  ga.dbias = db.data();

  check(coupled_scan::causal_conv_silu_forward_cpu(fa) == Status::kOk, "forward: valid call is ok");
  check(coupled_scan::causal_conv_silu_backward_cpu(ga) == Status::kOk, "backward: valid call is ok");

  struct Bad { const char* what; void (*edit)(CausalConvArgs<float>&); Status want; };
  const Bad bad[] = {
      {"width 0", [](CausalConvArgs<float>& a) { a.width = 0; }, Status::kInvalidSize},
      {"width -1", [](CausalConvArgs<float>& a) { a.width = -1; }, Status::kInvalidSize},
      {"width kMaxConvWidth + 1", [](CausalConvArgs<float>& a) { a.width = coupled_scan::kMaxConvWidth + 1; },
       Status::kInvalidSize},
      {"channels < 0", [](CausalConvArgs<float>& a) { a.channels = -1; }, Status::kInvalidSize},
      {"rows < 0", [](CausalConvArgs<float>& a) { a.rows = -2; }, Status::kInvalidSize},
      {"length < 0", [](CausalConvArgs<float>& a) { a.length = -1; }, Status::kInvalidSize},
      {"0 threads", [](CausalConvArgs<float>& a) { a.num_threads = 0; }, Status::kInvalidSize},
      {"null x", [](CausalConvArgs<float>& a) { a.x = nullptr; }, Status::kNullPointer},
      {"null weight", [](CausalConvArgs<float>& a) { a.weight = nullptr; }, Status::kNullPointer},
      {"channels not a multiple of step_major_groups", [](CausalConvArgs<float>& a) { a.step_major_groups = 3; },
       Status::kInvalidSize},
      {"step_major_groups < 0", [](CausalConvArgs<float>& a) { a.step_major_groups = -1; }, Status::kInvalidSize},
  };
  for (const Bad& e : bad) {
    CausalConvArgs<float> a = fa;
    e.edit(a);
    forward(a, e.want, e.what);
    CausalConvBackwardArgs<float> g = ga;
    e.edit(g.fwd);
    backward(g, e.want, e.what);
  }
  CausalConvArgs<float> a = fa;
  a.y = nullptr;
  forward(a, Status::kNullPointer, "null y");
  CausalConvBackwardArgs<float> g = ga;
  g.dy = nullptr;
  backward(g, Status::kNullPointer, "null dy");
  g = ga;
  g.dx = nullptr;
  backward(g, Status::kNullPointer, "null dx");
  g = ga;
  g.dweight = nullptr;
  backward(g, Status::kNullPointer, "null dweight");

  // No step (length 0): the forward writes nothing, the backward gives zero parameter gradients.
  a = fa;
  a.length = 0;
  forward(a, Status::kOk, "length 0 is ok");
  g = ga;
  g.fwd.length = 0;
  poison();
  g.dx = dx.data();
  g.dweight = dw.data();
  g.dbias = db.data();
  bool zero = coupled_scan::causal_conv_silu_backward_cpu(g) == Status::kOk;
  for (float e : dw) zero = zero && e == 0.0f;
  for (float e : db) zero = zero && e == 0.0f;
  check(zero && all_nan(dx), "backward: length 0 gives dweight = dbias = 0");
}

}  // namespace

int main() {
  std::setvbuf(stdout, nullptr, _IONBF, 0);
  std::printf("CPU kernels: %s\n", coupled_scan::cpu_isa());
  // Lengths around the kernels' vector paths (W = 2 .. 16 steps): rows shorter than a vector, below
  // and at two vectors (the shortest row of the register walks), a whole number of vectors (16, 64)
  // and not (the model's 50; 63: the last vectors overlap); widths fixed at compile time (1 .. 4)
  // and not (5, 16: the zero-padded windows).
  for (int64_t L : {1, 2, 3, 7, 15, 16, 17, 50, 63, 64, 2049})
    for (int64_t k : {1, 2, 3, 4, 5, 16})
      for (int64_t C : {1, 5})
        for (int64_t R : {1, 3})
          for (bool with_bias : {true, false}) {
            const ConvSize s{C, R, L, k, with_bias};
            compare_case<double>(s, 1e-12, 1e-12);
            compare_case<float>(s, 1e-5, 1e-5);
          }
  // Step-major: channels per group around the vector widths (not multiples of 16 but 32, 64:
  // whole vectors and cache-line blocks), rows shorter than k, widths fixed at compile time or not;
  // lengths around the backward's stretches of 16 steps (one, one and a step, the model's 50, 63:
  // a short last one, 2049) with taps reaching back across a stretch's start (k = 16).
  for (int64_t G : {1, 3})
    for (int64_t per_group : {1, 5, 17, 32, 37})
      for (int64_t L : {1, 3, 7, 16, 17, 50, 63, 2049})
        for (int64_t k : {1, 3, 4, 5, 16})
          for (int64_t R : {1, 3})
            for (bool with_bias : {true, false}) {
              if (L == 2049 && (k != 4 || R != 3 || !with_bias)) continue;  // a long row: one of each shape
              const ConvSize s{G * per_group, R, L, k, with_bias, G};
              compare_case<double>(s, 1e-12, 1e-12);
              compare_case<float>(s, 1e-5, 1e-5);
            }
  finite_difference_case({3, 2, 9, 4, true});
  finite_difference_case({6, 2, 9, 4, true, 3});
  finite_difference_case({4, 2, 2, 7, true, 2});
  finite_difference_case({2, 3, 2, 16, true});  // L < k - 1: every step in the zero-padded head
  status_cases();
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
