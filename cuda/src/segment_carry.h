// The short sequential pass of time segments (block_plan.h): from each segment's summary (its
// end value from zero and its factor) to the value each segment starts from. Forward: states,
// from the first segment on (start_0 = the initial state). Backward: reverse carries, from the
// last segment back (the last starts from zero). One call per (b, d, carried value).
#pragma once

#include "block_plan.h"

namespace coupled_scan {
namespace gpu {

struct SegmentCarry {
  BlockPlan p;
  SegmentArrays segs;
  float* work = nullptr;
  const float* initial_state = nullptr;  // forward only; (Bt, M, D, N) or null
  bool backward = false;

  CS_HD int64_t count() const { return p.Bt * p.D * p.width; }

  // factor * value, where a zero value stays zero even if the factor overflowed to inf ("sum"
  // coupling over a long segment), as it would on the one-segment path.
  CS_HD static float times(float factor, float value) { return value == 0.0f ? 0.0f : factor * value; }

  CS_HD void operator()(int64_t i) const {
    const int64_t b = i / (p.D * p.width), d = (i / p.width) % p.D;
    const int w = static_cast<int>(i % p.width);
    auto at = [&](int64_t s) { return ((b * p.segments + s) * p.D + d) * p.width + w; };
    float cur = 0.0f;
    if (!backward) {
      if (initial_state) {
        const int n = w % p.N;
        if (p.width == p.N) {  // rank one: s = sum_m h^m
          for (int m = 0; m < p.M; ++m) cur += initial_state[((b * p.M + m) * p.D + d) * p.N + n];
        } else {
          cur = initial_state[((b * p.M + w / p.N) * p.D + d) * p.N + n];
        }
      }
      for (int64_t s = 0; s + 1 < p.segments; ++s) {
        cur = times(work[segs.factor + at(s)], cur) + work[segs.end + at(s)];
        work[segs.start + at(s + 1)] = cur;
      }
    } else {
      for (int64_t s = p.segments - 1; s >= 1; --s) {
        cur = times(work[segs.factor + at(s)], cur) + work[segs.end + at(s)];
        work[segs.start + at(s - 1)] = cur;
      }
    }
  }
};

}  // namespace gpu
}  // namespace coupled_scan
