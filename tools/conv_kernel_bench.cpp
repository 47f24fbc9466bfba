// Times the CPU library's fused causal conv + SiLU (coupled_scan/causal_conv.h) forward and
// backward through its C++ API (no Python, no PyTorch: no allocation inside the timed calls), so
// that two builds of the library can be compared run against run. Prints one line per run:
//   conv_kernel_bench [short|long|C,R,L,k] [repeats] [threads] [f32|f64] [rows|steps]
// short and long are the model's sizes (768 channels: 3 modalities x 256; k = 4) with 32 rows of
// 50 steps and 8 rows of 500. `steps`: the step-major layout the model's layer uses (x as
// (3, rows, L, C / 3), CausalConvArgs::step_major_groups = 3; C / 3 must be whole); `rows`
// (default): (rows, C, L). Times are the minimum over the repeats after one warm-up call; a copy
// of x (memcpy) is timed the same way as the memory floor of a pass.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "coupled_scan/causal_conv.h"

using namespace coupled_scan;

namespace {

struct Size {
  int64_t C, R, L, k;
};

bool parse_size(const char* text, Size* s) {
  if (!std::strcmp(text, "short")) *s = {768, 32, 50, 4};
  else if (!std::strcmp(text, "long")) *s = {768, 8, 500, 4};
  else if (std::sscanf(text, "%ld,%ld,%ld,%ld", &s->C, &s->R, &s->L, &s->k) != 4) return false;
  return s->C > 0 && s->R > 0 && s->L > 0 && s->k >= 1 && s->k <= kMaxConvWidth;
}

template <typename T>
void run(const Size& s, const char* name, int repeats, int threads, bool steps) {
  std::mt19937 gen(0);
  std::normal_distribution<T> normal;
  auto random = [&](int64_t n, T scale) {
    std::vector<T> v(n);
    for (T& e : v) e = scale * normal(gen);
    return v;
  };
  const int64_t seq = s.C * s.R * s.L;
  const std::vector<T> x = random(seq, 1), w = random(s.C * s.k, 0.5), b = random(s.C, 0.5), dy = random(seq, 1);
  std::vector<T> y(seq), dx(seq), dw(s.C * s.k), db(s.C);
  CausalConvArgs<T> a;
  a.channels = s.C;
  a.rows = s.R;
  a.length = s.L;
  a.width = s.k;
  a.x = x.data();
  a.weight = w.data();
  a.bias = b.data();
  a.y = y.data();
  a.num_threads = threads;
  a.step_major_groups = steps ? 3 : 0;
  CausalConvBackwardArgs<T> g;
  g.fwd = a;
  g.dy = dy.data();
  g.dx = dx.data();
  g.dweight = dw.data();
  g.dbias = db.data();
  auto best_ms = [&](auto&& call) {
    call();  // warm-up: pages touched, caches and branch predictors primed
    double best = 1e30;
    for (int i = 0; i < repeats; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      call();
      best = std::min(best, std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    return best;
  };
  const double fwd = best_ms([&] { causal_conv_silu_forward_cpu(a); });
  const double bwd = best_ms([&] { causal_conv_silu_backward_cpu(g); });
  const double copy = best_ms([&] { std::memcpy(dx.data(), x.data(), seq * sizeof(T)); });
  std::printf("%s %s %s C=%ld R=%ld L=%ld k=%ld threads=%d: forward %.3f ms, backward %.3f ms, copy %.3f ms\n",
              name, sizeof(T) == 4 ? "f32" : "f64", steps ? "steps" : "rows", s.C, s.R, s.L, s.k, threads, fwd, bwd,
              copy);
}

}  // namespace

int main(int argc, char** argv) {
  Size s{};
  const char* name = argc > 1 ? argv[1] : "short";
  if (!parse_size(name, &s)) {
    std::fprintf(stderr, "size: expected short, long or C,R,L,k (1 <= k <= %ld); got %s\n", kMaxConvWidth, name);
    return 2;
  }
  const int repeats = argc > 2 ? std::atoi(argv[2]) : 20;
  const int threads = argc > 3 ? std::atoi(argv[3]) : 1;
  const bool f64 = argc > 4 && !std::strcmp(argv[4], "f64");
  const bool steps = argc > 5 && !std::strcmp(argv[5], "steps");
  if (repeats < 1 || threads < 1) {
    std::fprintf(stderr, "repeats and threads must be at least 1\n");
    return 2;
  }
  if (steps && s.C % 3 != 0) {
    std::fprintf(stderr, "steps: C must be a multiple of 3 (three groups), got %ld\n", s.C);
    return 2;
  }
  if (f64) run<double>(s, name, repeats, threads, steps);
  else run<float>(s, name, repeats, threads, steps);
  return 0;
}
