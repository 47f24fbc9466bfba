// The checks every back end (CPU, CUDA) makes on ForwardArgs before touching memory. The Python
// layer validates first and names the argument; these keep direct C++ callers safe.
#pragma once

#include "coupled_scan/coupled_scan.h"

namespace coupled_scan {

template <typename T>
Status check_forward_args(const ForwardArgs<T>& a) {
  const Sizes& s = a.size;
  if (s.batch < 0 || s.channels < 0 || s.length < 0) return Status::kInvalidSize;
  if (s.modalities < 1 || s.modalities > kMaxModalities) return Status::kInvalidSize;
  if (s.state < 1 || s.state > kMaxState) return Status::kInvalidSize;
  if (a.coupling != CouplingKind::kRankOne && a.coupling != CouplingKind::kNone &&
      a.coupling != CouplingKind::kGeneral)
    return Status::kInvalidArgument;
  if (s.batch == 0 || s.channels == 0) return Status::kOk;
  if (s.length > 0 && (!a.u.data || !a.delta.data || !a.B.data || !a.C.data || !a.A)) return Status::kNullPointer;
  if (a.coupling == CouplingKind::kGeneral && !a.W) return Status::kNullPointer;
  return Status::kOk;
}

// Per-sample lengths must lie in [0, L]. Reads `lengths` on the host: a back end whose lengths
// live in device memory checks a host copy (check_forward_args never dereferences them).
inline Status check_lengths(const int64_t* lengths, int64_t batch, int64_t length) {
  if (!lengths) return Status::kOk;
  for (int64_t b = 0; b < batch; ++b)
    if (lengths[b] < 0 || lengths[b] > length) return Status::kInvalidSize;
  return Status::kOk;
}

}  // namespace coupled_scan
