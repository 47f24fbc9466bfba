// Accuracy and special values of the fast float32 functions in math.h, scalar and vector forms.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>

#include "coupled_scan/math.h"

using namespace coupled_scan;

static int g_failed = 0, g_passed = 0;
static void check(bool ok, const std::string& what) {
  ok ? ++g_passed : ++g_failed;
  if (!ok) std::printf("FAILED: %s\n", what.c_str());
}

typedef float F16 __attribute__((vector_size(64)));
typedef std::uint32_t U16 __attribute__((vector_size(64)));

int main() {
  double exp_err = 0, exp2_err = 0, sp_err = 0, sig_err = 0, sig2_err = 0, log_err = 0;
  bool vector_matches = true, softplus_shared_matches = true;
  // 2^x over [-125, 128) on a fine grid, and every float of [-1, 1) with a stride (the
  // polynomial's interval and its neighbours: f = x - round(x) covers [-1/2, 1/2] in both).
  for (double x = -125.0; x < 128.0; x += 0.000437) {
    const float xf = static_cast<float>(x);
    const double e = std::exp2(static_cast<double>(xf));
    if (e < 3.4e38) exp2_err = std::fmax(exp2_err, std::fabs(fast_exp2f(xf) - e) / e);
  }
  for (float xf = -1.0f; xf < 1.0f; xf = std::nextafter(xf, 2.0f) + 3e-9f) {
    const double e = std::exp2(static_cast<double>(xf));
    exp2_err = std::fmax(exp2_err, std::fabs(fast_exp2f(xf) - e) / e);
  }
  for (double x = -100.0; x < 100.0; x += 0.000731) {
    const float xf = static_cast<float>(x);
    const double e = std::exp(static_cast<double>(xf));
    if (e > 2e-38 && e < 3.4e38) exp_err = std::fmax(exp_err, std::fabs(fast_expf(xf) - e) / e);
    const double sp = xf > 20 ? xf : std::log1p(std::exp(static_cast<double>(xf)));
    if (sp > 2e-38) sp_err = std::fmax(sp_err, std::fabs(fast_softplusf(xf) - sp) / sp);
    const double sg = 1.0 / (1.0 + std::exp(-static_cast<double>(xf)));
    if (sg > 2e-38) sig_err = std::fmax(sig_err, std::fabs(fast_sigmoidf(xf) - sg) / sg);
    float sig2 = -1.0f;  // the softplus + sigmoid pair: the same softplus bits, a sigmoid as accurate
    softplus_shared_matches &= fast_softplus_sigmoidf(xf, &sig2) == fast_softplusf(xf);
    if (sg > 2e-38) sig2_err = std::fmax(sig2_err, std::fabs(sig2 - sg) / sg);
  }
  for (double w = 1e-37; w < 3e38; w *= 1.0007) {
    const float wf = static_cast<float>(w);
    const double l = std::log(static_cast<double>(wf));
    log_err = std::fmax(log_err, std::fabs(fast_logf(wf) - l) / std::fmax(1.0, std::fabs(l)));
  }
  for (int base = 0; base < 2000; ++base) {  // the vector form computes the same bits
    F16 v;
    for (int j = 0; j < 16; ++j) v[j] = -95.0f + 0.0953f * (base * 16 + j) * 0.0625f;
    const F16 r = fast_exp_impl<F16, U16>(v);
    const F16 r2 = fast_exp2_impl<F16, U16>(v * 1.5f);
    for (int j = 0; j < 16; ++j) vector_matches &= r[j] == fast_expf(v[j]) && r2[j] == fast_exp2f(v[j] * 1.5f);
  }
  std::printf("max relative error: exp %.2e, exp2 %.2e, softplus %.2e, sigmoid %.2e, log %.2e\n", exp_err,
              exp2_err, sp_err, sig_err, log_err);
  check(exp_err < 3e-7, "fast_expf relative error < 3e-7");
  check(exp2_err < 2e-7, "fast_exp2f relative error < 2e-7");
  check(sp_err < 5e-7, "fast_softplusf relative error < 5e-7");
  check(sig_err < 5e-7, "fast_sigmoidf relative error < 5e-7");
  check(sig2_err < 5e-7, "fast_softplus_sigmoidf's sigmoid relative error < 5e-7");
  check(softplus_shared_matches, "fast_softplus_sigmoidf's softplus equals fast_softplusf bit for bit");
  check(log_err < 3e-7, "fast_logf error < 3e-7");
  check(vector_matches, "vector fast exp equals the scalar one bit for bit");
  check(std::isnan(fast_expf(NAN)) && std::isnan(fast_softplusf(NAN)) && std::isnan(fast_sigmoidf(NAN)),
        "NaN propagates through exp, softplus, sigmoid");
  check(std::isinf(fast_expf(89.0f)) && fast_expf(INFINITY) == INFINITY, "exp overflows to +inf");
  check(fast_expf(-88.0f) == 0.0f && fast_expf(-INFINITY) == 0.0f, "exp underflows to 0");
  check(fast_expf(0.0f) == 1.0f, "exp(0) = 1");
  check(std::isnan(fast_exp2f(NAN)) && std::isinf(fast_exp2f(128.0f)) && fast_exp2f(INFINITY) == INFINITY,
        "exp2: NaN propagates, overflows to +inf at 128");
  check(fast_exp2f(-126.0f) == 0.0f && fast_exp2f(-INFINITY) == 0.0f && fast_exp2f(-125.0f) == std::exp2(-125.0f),
        "exp2 underflows to 0 at -126, exact at -125");
  check(fast_exp2f(0.0f) == 1.0f && fast_exp2f(1.0f) == 2.0f && fast_exp2f(-3.0f) == 0.125f, "exp2 of integers");
  check(fast_softplusf(25.0f) == 25.0f && fast_softplusf(-INFINITY) == 0.0f && fast_softplusf(INFINITY) == INFINITY,
        "softplus above 20 is x; limits");
  check(fast_sigmoidf(-INFINITY) == 0.0f && fast_sigmoidf(INFINITY) == 1.0f, "sigmoid limits");
  {
    float lo = -1.0f, hi = -1.0f, nan_sig = 0.0f;
    const float sp_lo = fast_softplus_sigmoidf(-INFINITY, &lo), sp_hi = fast_softplus_sigmoidf(INFINITY, &hi);
    const float sp_nan = fast_softplus_sigmoidf(NAN, &nan_sig);
    check(sp_lo == 0.0f && lo == 0.0f && sp_hi == INFINITY && hi == 1.0f, "softplus + sigmoid pair: limits");
    check(std::isnan(sp_nan) && std::isnan(nan_sig), "softplus + sigmoid pair: NaN propagates to both");
  }
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
