// Times the AVX-512 kernels' decay (block_decay in cpp/src/cpu/simd_block.h: vreduceps,
// vrndscaleps, a zero-masked vscalefps) against the portable formula it replaced
// (portable_block_decay: the clamp, then fast_exp2_clamped), each as exp(dt A) over one step's 3 x 64 state vectors of one channel
// vector (12 kB, in L1), the forward's inner loop without the rest of the scan. The two run in
// turns, 9 rounds; prints ns per 16 decays (best and median over the rounds) and their ratio,
// and writes JSON. Needs an AVX-512 CPU.
//
//   g++ -O3 -std=gnu++17 -fno-math-errno -fno-trapping-math -Wno-psabi -mavx512f -mavx512vl \
//       -mavx512dq -mavx512bw -mfma -Icpp/include -Icpp/src tools/decay_bench.cpp -o decay_bench
//   ./decay_bench [out.json]
#define CS_ISA avx512
#define CS_VEC_BYTES 64
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "cpu/simd_block.h"

using namespace coupled_scan;
using namespace coupled_scan::cpu::avx512;
typedef Simd<float>::V V;

constexpr int kVectors = 3 * 64;  // G x N state vectors of one step
constexpr int kSteps = 20000;

__attribute__((noinline)) void portable_step(const float* A, float dt, float* out) {
  for (int i = 0; i < kVectors; ++i) {
    const V x = load_block<V>(A + i * 16) * dt;
    store_block(out + i * 16, portable_block_decay<true>(x));
  }
}
__attribute__((noinline)) void avx512_step(const float* A, float dt, float* out) {
  for (int i = 0; i < kVectors; ++i) store_block(out + i * 16, block_decay<true>(load_block<V>(A + i * 16) * dt));
}

static double time_ns_per_vector(void (*step)(const float*, float, float*), const float* A, float* out) {
  const auto t0 = std::chrono::steady_clock::now();
  for (int k = 0; k < kSteps; ++k) step(A, 0.02f + 1e-6f * k, out);  // dt as the model's, about 0.02 to 0.04
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return s * 1e9 / (double(kSteps) * kVectors);
}

static std::string cpu_name() {
  std::ifstream f("/proc/cpuinfo");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown";
}

int main(int argc, char** argv) {
  if (!(__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq"))) {
    std::printf("decay_bench: this CPU has no AVX-512 (F, DQ)\n");
    return 2;
  }
  alignas(64) static float A[kVectors * 16], out[kVectors * 16];
  for (int i = 0; i < kVectors * 16; ++i) A[i] = -float((i / 16) % 64 + 1) * kLog2e;  // S4D-real A, scaled
  std::vector<double> portable, fast;
  for (int round = 0; round < 9; ++round) {
    portable.push_back(time_ns_per_vector(portable_step, A, out));
    fast.push_back(time_ns_per_vector(avx512_step, A, out));
  }
  auto best = [](std::vector<double> v) { return *std::min_element(v.begin(), v.end()); };
  auto median = [](std::vector<double> v) { std::sort(v.begin(), v.end()); return v[v.size() / 2]; };
  std::printf("%-34s %10s %10s\n", "decay of 16 values (ns)", "best", "median");
  std::printf("%-34s %10.3f %10.3f\n", "portable (clamp, fast_exp2_clamped)", best(portable), median(portable));
  std::printf("%-34s %10.3f %10.3f\n", "avx512 block_decay", best(fast), median(fast));
  std::printf("%-34s %10.2f %10.2f\n", "ratio avx512 / portable", best(fast) / best(portable),
              median(fast) / median(portable));
  if (argc > 1) {
    FILE* f = std::fopen(argv[1], "w");
    if (!f) return 1;
    std::fprintf(f,
                 "{\"benchmark\": \"exp(dt A) of 3 x 64 state vectors per step, 16 floats each, in L1\", "
                 "\"command\": \"./decay_bench %s\", \"machine\": \"%s\", \"rounds\": 9, \"steps_per_round\": %d,\n"
                 " \"portable_ns\": {\"best\": %.4f, \"median\": %.4f}, \"avx512_ns\": {\"best\": %.4f, \"median\": %.4f},\n"
                 " \"ratio_best\": %.4f, \"ratio_median\": %.4f}\n",
                 argv[1], cpu_name().c_str(), kSteps, best(portable), median(portable), best(fast), median(fast),
                 best(fast) / best(portable), median(fast) / median(portable));
    std::fclose(f);
    std::printf("wrote %s\n", argv[1]);
  }
  return 0;
}
