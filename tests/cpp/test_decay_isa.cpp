// The AVX-512 kernels' decay (block_decay in cpu/simd_block.h: vreduceps, vrndscaleps, vscalefps)
// against the portable formula it replaces (portable_block_decay: the clamps, then
// fast_exp2_clamped), compiled with the AVX-512 kernels' flags: the bits must agree in every lane,
// over float bit patterns spread across every exponent (one in 29) and the edge values (the zero
// cut near -126, the overflow near 128, infinities, NaN, signed zeros, denormals). Skipped (77) on
// a CPU without AVX-512.
#define CS_ISA avx512
#define CS_VEC_BYTES 64
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>

#include "cpu/simd_block.h"

using namespace coupled_scan;
using namespace coupled_scan::cpu::avx512;
typedef Simd<float>::V V;

static long g_checked = 0, g_mismatches = 0;

static bool same(float a, float b) {
  std::uint32_t ua, ub;
  std::memcpy(&ua, &a, 4);
  std::memcpy(&ub, &b, 4);
  return ua == ub || (std::isnan(a) && std::isnan(b));
}

static void check_lanes(V x) {
  const V full = block_decay<false>(x), expect_full = portable_block_decay<false>(x);
  const V nonpos = block_decay<true>(x), expect_nonpos = portable_block_decay<true>(x);
  for (int j = 0; j < 16; ++j) {
    ++g_checked;
    // The NonPositive form is only used (and only defined to agree) where x <= 0 or NaN.
    const bool ok = same(full[j], expect_full[j]) && (x[j] > 0 || same(nonpos[j], expect_nonpos[j]));
    if (!ok && ++g_mismatches <= 10)
      std::printf("MISMATCH x = %a: block_decay %a / %a, portable %a / %a\n", x[j], full[j], nonpos[j],
                  expect_full[j], expect_nonpos[j]);
  }
}

int main() {
  if (!(__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq"))) {
    std::printf("SKIPPED: this CPU has no AVX-512 (F, DQ)\n");
    return 77;
  }
  V x;
  int j = 0;
  for (std::uint64_t bits = 0; bits < (std::uint64_t(1) << 32); bits += 29) {
    const std::uint32_t b = static_cast<std::uint32_t>(bits);
    std::memcpy(&x[j], &b, 4);
    if (++j == 16) {
      check_lanes(x);
      j = 0;
    }
  }
  const float edges[] = {0.0f,      -0.0f,  INFINITY, -INFINITY, NAN,   -126.0f, -125.5f,      -125.49999f,
                         -125.5001f, -126.5f, 127.5f,   127.4999f, 128.0f, 128.5f,  -1e-45f,      1e-45f};
  for (int i = 0; i < 16; ++i) x[i] = edges[i];
  check_lanes(x);
  const bool zero_cut = block_decay<true>(V{} - 126.0f)[0] == 0.0f && block_decay<true>(V{} - 125.0f)[0] == std::exp2(-125.0f);
  std::printf("%ld lanes, %ld mismatches; exact 0 at -126 and 2^-125 at -125: %s\n", g_checked, g_mismatches,
              zero_cut ? "yes" : "NO");
  if (g_mismatches || !zero_cut || g_checked < 100000000) {
    std::printf("FAILED\n");
    return 1;
  }
  std::printf("PASSED\n");
  return 0;
}
