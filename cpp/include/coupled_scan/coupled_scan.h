// Public C++ API of the coupled selective scan (docs/coupled-scan.md). No PyTorch inside:
// tensors arrive as raw pointers plus strides, results come back as a Status code.
#pragma once

#include <cstdint>

#include "coupled_scan/math.h"  // CS_HD

namespace coupled_scan {

enum class Status : int {
  kOk = 0,
  kInvalidSize = 1,      // a size is negative or out of its supported range
  kNullPointer = 2,      // a required pointer is null
  kOutOfMemory = 4,      // a workspace allocation failed
  kInternalError = 5,    // an unexpected exception inside the library
  kNotCompiled = 6,      // the requested back end (e.g. CUDA) is not in this build
  kCudaError = 7,        // a CUDA runtime call failed
  kInvalidArgument = 8,  // an enum or flag has an unsupported value
};

const char* status_string(Status s);

// Limits of the kernels; the Python layer checks them first and says which argument is wrong.
constexpr int64_t kMaxModalities = 8;
constexpr int64_t kMaxState = 256;
enum class CouplingKind : int {
  kRankOne = 0,  // W = alpha * ones(M, M) ("sum": alpha 1, "mean": alpha 1/M): one state per (b, d, n)
  kNone = 1,     // W = identity: M independent selective scans
  kGeneral = 2,  // any (M, M) W: an M-vector of states per (b, d, n)
};

// Time steps between two saved states (checkpoints) that the CPU backward restarts from. It keeps
// a chunk's decays exp(dt A) of one channel vector, steps x modalities of the task x N vectors:
// with all M modalities in one task (rank-one, general W) 32 steps keep that near 400 KB of floats
// at M = 3, N = 64 (at 64 steps it and the rest of the backward's working set outgrew the 2 MB L2:
// the backward 10% to 16% slower); "none" runs one modality per task, where 64 steps cost a third
// of that and shorter chunks only added per-chunk work (6% to 16% slower).
CS_HD int64_t chunk_length(CouplingKind kind) { return kind == CouplingKind::kNone ? 64 : 32; }
// The longest chunk: the kernels' per-step scratch rows hold this many steps.
constexpr int64_t kChunk = 64;

CS_HD int64_t num_chunks(CouplingKind kind, int64_t length) {
  return (length + chunk_length(kind) - 1) / chunk_length(kind);
}

// Values of one state checkpoint: N for the rank-one path, M * N otherwise.
CS_HD int64_t checkpoint_width(CouplingKind kind, int64_t modalities, int64_t state) {
  return kind == CouplingKind::kRankOne ? state : modalities * state;
}

struct Sizes {
  int64_t batch = 0;       // Bt
  int64_t modalities = 0;  // M
  int64_t channels = 0;    // D
  int64_t state = 0;       // N
  int64_t length = 0;      // L
};

// A strided (Bt, M, R, L) tensor (R = D or N) in one of two layouts:
// - row-major in time (stride_time == 1): each (b, m, r) row of L steps is contiguous, as in a
//   contiguous (Bt, M, R, L) tensor;
// - step-major (stride_time != 1, stride_row == 1; CPU only): the R values of one (b, m, t) are
//   contiguous, as in a (Bt, M, L, R) tensor or in a model's (M, batch * L, R) activations; the
//   CPU kernels then load a step's channels as whole vectors instead of transposing rows.
// The tensors of one call that share a row axis share the layout: u, delta, z, out, dout, du,
// d delta and dz take u's, and B, C, dB and dC take B's (check_layouts).
template <typename T>
struct SeqTensor {
  T* data = nullptr;
  int64_t stride_batch = 0;
  int64_t stride_modality = 0;
  int64_t stride_row = 0;
  int64_t stride_time = 1;
  CS_HD T* row(int64_t b, int64_t m, int64_t r) const {
    return data + b * stride_batch + m * stride_modality + r * stride_row;
  }
  // Element (b, m, r, t).
  CS_HD T* at(int64_t b, int64_t m, int64_t r, int64_t t) const { return row(b, m, r) + t * stride_time; }
  CS_HD bool step_major() const { return stride_time != 1; }
};

// Inputs and outputs of the forward pass. Parameter and state tensors are contiguous.
template <typename T>
struct ForwardArgs {
  Sizes size;
  SeqTensor<const T> u;       // (Bt, M, D, L)
  SeqTensor<const T> delta;   // (Bt, M, D, L)
  const T* A = nullptr;       // (M, D, N)
  SeqTensor<const T> B;       // (Bt, M, N, L)
  SeqTensor<const T> C;       // (Bt, M, N, L)
  const T* D = nullptr;       // (M, D) or null
  SeqTensor<const T> z;       // (Bt, M, D, L); data null for no gate
  const T* delta_bias = nullptr;  // (M, D) or null
  bool delta_softplus = false;
  CouplingKind coupling = CouplingKind::kRankOne;
  T alpha = T(1);             // the rank-one weight
  const T* W = nullptr;       // (M, M), kGeneral only
  const T* initial_state = nullptr;  // (Bt, M, D, N) or null for zeros
  T* out = nullptr;           // (Bt, M, D, L) contiguous
  T* last_state = nullptr;    // (Bt, M, D, N) or null
  T* checkpoints = nullptr;   // (Bt, D, num_chunks(coupling, L), checkpoint_width) or null
  // Per-sample lengths, (Bt,) with 0 <= lengths[b] <= L (kInvalidSize otherwise); null: every
  // sample has length L. Sample b is scanned over steps 0 .. lengths[b]-1 only: `out` is 0 at
  // later steps, last_state is the state after step lengths[b]-1 (the initial state when the
  // length is 0), and checkpoint c holds the state before step min(c * chunk_length, lengths[b]).
  // The backward gives exact zeros at later steps, sums the parameter gradients over valid steps
  // only and sends d last_state into step lengths[b]-1. Padded inputs are never read.
  const int64_t* lengths = nullptr;
  int num_threads = 1;
  // Optional strided layout of `out` (in u's layout, either of SeqTensor's), written instead of
  // the contiguous pointer when its data is non-null, so the output can share its input's layout;
  // required when u is step-major. CPU only.
  SeqTensor<T> out_rows;
};

// Steps scanned for sample b: lengths[b], or L without lengths.
CS_HD int64_t sample_length(const int64_t* lengths, int64_t b, int64_t length) {
  return lengths ? lengths[b] : length;
}

// Gradients of the backward pass, contiguous unless the optional *_rows layouts below are given.
// Optional ones may be null when not wanted.
template <typename T>
struct BackwardArgs {
  ForwardArgs<T> fwd;            // the forward inputs; its outputs are ignored
  const T* checkpoints = nullptr;  // from the forward pass; null: recomputed here
  SeqTensor<const T> dout;       // (Bt, M, D, L)
  const T* dlast_state = nullptr;  // (Bt, M, D, N) or null
  T* du = nullptr;               // (Bt, M, D, L)
  T* ddelta = nullptr;           // (Bt, M, D, L)
  T* dA = nullptr;               // (M, D, N)
  T* dB = nullptr;               // (Bt, M, N, L)
  T* dC = nullptr;               // (Bt, M, N, L)
  T* dD = nullptr;               // (M, D) or null
  T* dz = nullptr;               // (Bt, M, D, L), needed when z is given
  T* ddelta_bias = nullptr;      // (M, D) or null
  T* dW = nullptr;               // (M, M) or null (kGeneral only)
  T* dinitial_state = nullptr;   // (Bt, M, D, N) or null
  // Optional strided layouts of the sequence gradients (du, d delta, dz in u's layout; dB, dC in
  // B's), so a caller can receive each gradient in its input's layout without a copy. When a
  // layout's data is non-null it is written instead of the contiguous pointer above; required for
  // the gradients of step-major inputs. CPU only: the CUDA entry points write the contiguous
  // pointers.
  SeqTensor<T> du_rows, ddelta_rows, dB_rows, dC_rows, dz_rows;
};

// The layout a CPU kernel writes a sequence result (out, du, ...) in: `rows` when given, else the
// contiguous (Bt, M, R, L) tensor at `contiguous`.
template <typename T>
CS_HD SeqTensor<T> result_rows(const SeqTensor<T>& rows, T* contiguous, const Sizes& s, int64_t R) {
  if (rows.data) return rows;
  return {contiguous, s.modalities * R * s.length, R * s.length, s.length};
}

// CPU entry points, instantiated for float and double. Deterministic: the bits of every
// result depend on the inputs only, not on the thread count or scheduling.
template <typename T>
Status forward_cpu(const ForwardArgs<T>& args);
template <typename T>
Status backward_cpu(const BackwardArgs<T>& args);

// Which vector instruction set the CPU kernels dispatched to ("avx512", "avx2" or "baseline").
const char* cpu_isa();

}  // namespace coupled_scan
