// Public CUDA API of the coupled selective scan (docs/coupled-scan.md). No CUDA or PyTorch
// headers: the stream crosses as a void* (a cudaStream_t), tensors as pointers and strides.
// These functions exist only in builds with the CUDA kernels (CMake: COUPLED_MAMBA_CUDA).
#pragma once

#include <cstdint>

#include "coupled_scan/coupled_scan.h"

namespace coupled_scan {

// Time steps between two saved states on the GPU. Smaller than the CPU's kChunk: the backward
// keeps one chunk of recomputed states per thread (in local memory, which the driver reserves
// for every resident thread), so the vector path, with M states per n, uses shorter chunks.
constexpr int64_t kCudaChunkRankOne = 16;
constexpr int64_t kCudaChunkVector = 8;

CS_HD int64_t cuda_chunk(CouplingKind kind) {
  return kind == CouplingKind::kRankOne ? kCudaChunkRankOne : kCudaChunkVector;
}
CS_HD int64_t num_cuda_chunks(int64_t length, CouplingKind kind) {
  return (length + cuda_chunk(kind) - 1) / cuda_chunk(kind);
}

// dtype of the sequence tensors u, delta, B, C, z and dout. Everything else (A, D, delta_bias,
// W, states, checkpoints, out and all gradients) is float32; all arithmetic is float32.
enum class SeqDType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// How and where a call runs. It runs on GPU `device` (made current for the call and restored
// afterwards: the library has its own static CUDA runtime) and on `stream`, a stream of that
// device (e.g. PyTorch's current stream). `time_segments`: 0 lets the library split long
// sequences into segments that run in parallel when the grid alone would leave the GPU idle
// (docs/cuda.md); 1 forces one block per (b, 32 channels) walking all of L; n > 1 asks for n.
// `max_shared_bytes`: 0 lets a block use up to the device's opt-in shared-memory limit; n > 0
// caps it at n bytes (the plan then takes smaller rounds, or fails with kInvalidSize and a
// message in cuda_error_text() when nothing fits).
struct CudaCall {
  SeqDType dtype = SeqDType::kFloat32;  // of the sequence tensors
  int device = 0;
  void* stream = nullptr;
  int64_t time_segments = 0;
  int64_t max_shared_bytes = 0;
};

// float32 elements of scratch memory a forward (backward = false) or backward call with these
// sizes needs (segment summaries; in the backward also partial sums reduced in a fixed order;
// with `recompute_checkpoints`, for a backward called without checkpoints, also the room for
// the checkpoints it recomputes); -1 when the device cannot be queried.
int64_t cuda_workspace(const Sizes& size, CouplingKind coupling, bool backward, const CudaCall& call,
                       bool recompute_checkpoints = false);

// Forward. The SeqTensor pointers of `a` point at data of type call.dtype (strides in elements
// of that type). a.checkpoints, when not null, is (Bt, D, num_cuda_chunks(L, coupling), width).
// a.lengths, when not null, is in device memory with the semantics of ForwardArgs::lengths
// (checkpoint c holds the state before step min(c * cuda_chunk, lengths[b])). Its values are not
// checked here (that would need a copy to the host): the kernels clamp each length to [0, L], so
// an out-of-range value never reads or writes out of bounds; callers check the range (the Python
// op raises a ValueError naming `lengths`).
Status forward_cuda(const ForwardArgs<float>& a, const CudaCall& call, float* workspace);

// Backward. a.checkpoints come from forward_cuda, or are null: then the backward recomputes
// them with a forward pass into `workspace`, which must then have the size cuda_workspace gives
// with recompute_checkpoints = true. Deterministic: no atomics, every sum runs in a fixed order,
// so the same inputs (and time_segments) give the same bits on every run.
Status backward_cuda(const BackwardArgs<float>& a, const CudaCall& call, float* workspace);

// The message of the CUDA runtime error behind the last kCudaError on this thread.
const char* cuda_error_text();

// The benchmarks' exp floor: milliseconds GPU `device` takes for `count` float32 exponentials
// (the kernels' exp, in registers, no memory traffic), timed with CUDA events; < 0 on error.
double cuda_exp_floor_ms(int64_t count, int device);

// Number of usable GPUs (0 without a driver or device, or with a driver too old for this
// library's CUDA runtime; cuda_error_text() then says which). Never fails.
int cuda_device_count();

// The CUDA runtime version the library was built with (e.g. 12040 for 12.4); the driver must
// support it.
int cuda_runtime_version();

}  // namespace coupled_scan
