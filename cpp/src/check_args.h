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

}  // namespace coupled_scan
