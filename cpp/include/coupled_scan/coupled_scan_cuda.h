// Public CUDA API of the coupled selective scan (docs/coupled-scan.md). No CUDA or PyTorch
// headers: the stream crosses as a void* (a cudaStream_t), tensors as pointers and strides.
// These functions exist only in builds with the CUDA kernels (CMake: COUPLED_MAMBA_CUDA).
#pragma once

#include <cstdint>

#include "coupled_scan/coupled_scan.h"

namespace coupled_scan {

// Time steps between two saved states on the GPU. Smaller than the CPU's kChunk: the backward
// keeps one chunk of recomputed states per thread, which must stay small.
constexpr int64_t kCudaChunk = 16;

CS_HD int64_t num_cuda_chunks(int64_t length) { return (length + kCudaChunk - 1) / kCudaChunk; }

// dtype of the sequence tensors u, delta, B, C, z and dout. Everything else (A, D, delta_bias,
// W, states, checkpoints, out and all gradients) is float32; all arithmetic is float32.
enum class SeqDType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// Every call runs on GPU `device` (made current on the calling thread: the library has its own
// static CUDA runtime, so the caller's current device does not carry over) and on `stream`, a
// stream of that device (e.g. PyTorch's current stream). The SeqTensor pointers of `a` point at data of type `dtype` (strides in
// elements of that type). a.checkpoints, when not null, is (Bt, D, num_cuda_chunks(L), width).
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

// Number of usable GPUs (0 without a driver or device; never fails).
int cuda_device_count();

}  // namespace coupled_scan
