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

// Every call runs on GPU `device` (made current on the calling thread: the library has its own
// static CUDA runtime, so the caller's current device does not carry over) and on `stream`, a
// stream of that device (e.g. PyTorch's current stream). The SeqTensor pointers of `a` point at data of type `dtype` (strides in
// elements of that type). a.checkpoints, when not null, is (Bt, D, num_cuda_chunks(L, coupling), width).
Status forward_cuda(const ForwardArgs<float>& a, SeqDType dtype, int device, void* stream);

// float32 elements of scratch memory backward_cuda needs (partial sums reduced in a fixed order).
int64_t backward_cuda_workspace(const Sizes& size, CouplingKind coupling);

// Backward on `stream`; a.checkpoints must come from forward_cuda. Deterministic: no atomics,
// every sum runs in a fixed order. `workspace` holds backward_cuda_workspace(...) floats.
Status backward_cuda(const BackwardArgs<float>& a, SeqDType dtype, float* workspace, int device, void* stream);

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
