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

// SeqTensor's layout rule: a tensor follows its group's layout (u's for the channel rows, B's for
// the state rows): row-major in time needs stride_time == 1, step-major needs stride_row == 1.
// An absent tensor matches. A result that is not given as a strided layout (out_rows, du_rows,
// ...) is written to the contiguous (Bt, M, R, L) pointer, which is row-major in time.
template <typename T>
bool follows_layout(const SeqTensor<T>& x, bool step_major) {
  if (!x.data) return true;
  return step_major ? x.stride_row == 1 : x.stride_time == 1;
}
template <typename T>
bool result_follows_layout(const SeqTensor<T>& rows, const T* contiguous, bool step_major) {
  return rows.data ? follows_layout(rows, step_major) : !(contiguous && step_major);
}

// The layouts of the sequence inputs (kInvalidArgument when they break the rule).
template <typename T>
Status check_input_layouts(const ForwardArgs<T>& a) {
  const bool rows_sm = a.u.step_major(), states_sm = a.B.step_major();
  if (!follows_layout(a.u, rows_sm) || !follows_layout(a.delta, rows_sm) || !follows_layout(a.z, rows_sm) ||
      !follows_layout(a.B, states_sm) || !follows_layout(a.C, states_sm))
    return Status::kInvalidArgument;
  return Status::kOk;
}

// The forward's `out`.
template <typename T>
Status check_output_layout(const ForwardArgs<T>& a) {
  return result_follows_layout(a.out_rows, a.out, a.u.step_major()) ? Status::kOk : Status::kInvalidArgument;
}

// The backward's dout and sequence gradients.
template <typename T>
Status check_gradient_layouts(const BackwardArgs<T>& a) {
  const bool rows_sm = a.fwd.u.step_major(), states_sm = a.fwd.B.step_major();
  if (!follows_layout(a.dout, rows_sm) || !result_follows_layout(a.du_rows, a.du, rows_sm) ||
      !result_follows_layout(a.ddelta_rows, a.ddelta, rows_sm) ||
      (a.fwd.z.data && !result_follows_layout(a.dz_rows, a.dz, rows_sm)) ||  // dz is written only with z
      !result_follows_layout(a.dB_rows, a.dB, states_sm) || !result_follows_layout(a.dC_rows, a.dC, states_sm))
    return Status::kInvalidArgument;
  return Status::kOk;
}

// Whether any sequence input is step-major (the CUDA kernels read row-major tensors only).
template <typename T>
bool reads_step_major(const ForwardArgs<T>& a) {
  return a.u.step_major() || a.delta.step_major() || a.z.step_major() || a.B.step_major() || a.C.step_major();
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
