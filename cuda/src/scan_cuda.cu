// CUDA entry points: the kernels (one thread block per batch element x 32 channels, see
// block_plan.h), the launcher that scan_driver.h drives, and the public functions of
// coupled_scan_cuda.h. Only the combinations in use are instantiated: sequence dtype (float32,
// float16, bfloat16) x path (rank one, vector) x block size class (<= 256 or <= 1024 threads) for
// forward and backward, plus a reduction and a fill kernel.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <string>
#include <type_traits>

#include "coupled_scan/coupled_scan_cuda.h"

namespace coupled_scan {
namespace gpu {
template <typename T>
struct SeqLoad;
template <>
struct SeqLoad<__half> {
  __device__ __forceinline__ static float at(const __half* p) { return __half2float(*p); }
};
template <>
struct SeqLoad<__nv_bfloat16> {
  __device__ __forceinline__ static float at(const __nv_bfloat16* p) { return __bfloat162float(*p); }
};
}  // namespace gpu
}  // namespace coupled_scan

#include "backward_block.h"
#include "forward_block.h"
#include "scan_driver.h"

namespace coupled_scan {
namespace gpu {
namespace {

thread_local std::string g_error;

Status cuda_status(cudaError_t e, const char* where) {
  if (e == cudaSuccess) return Status::kOk;
  g_error = std::string(where) + ": " + cudaGetErrorName(e) + ": " + cudaGetErrorString(e);
  return Status::kCudaError;
}

// kMaxThreads bounds the registers per thread so that a block fits an SM's 64 K registers:
// 256 for N <= 64 (up to 255 registers), 1024 for larger N (64 registers, the rest spills to L1).
template <typename Tin, bool kVector, int kMaxThreads>
__global__ void __launch_bounds__(kMaxThreads)
    forward_kernel(ForwardArgs<float> a, Pass pass, SegmentArrays segs, float* work, BlockPlan p) {
  extern __shared__ float smem[];
  using Block = ForwardBlock<Tin, kVector>;
  const Block block(a, p, pass, segs, work, static_cast<int64_t>(blockIdx.x), smem);
  DeviceExec<typename Block::Thread> ex;
  run_forward_block(block, ex);
}

template <typename Tin, bool kVector, int kMaxThreads>
__global__ void __launch_bounds__(kMaxThreads)
    backward_kernel(BackwardArgs<float> g, Pass pass, Workspace map, float* work, BlockPlan p) {
  extern __shared__ float smem[];
  using Block = BackwardBlock<Tin, kVector>;
  const Block block(g, p, pass, map, work, static_cast<int64_t>(blockIdx.x), smem);
  DeviceExec<typename Block::Thread> ex;
  run_backward_block(block, ex);
}

__global__ void sum_leading_kernel(const float* in, float* out, int64_t K, int64_t inner, int64_t count) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = sum_leading_at(in, K, inner, i);
}

// job(i) for every index below job.count() (SegmentCarry, TransposedSum).
template <typename Job>
__global__ void each_index_kernel(Job job) {
  const int64_t count = job.count();
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count; i += int64_t(gridDim.x) * blockDim.x)
    job(i);
}

__global__ void fill_kernel(float* p, int64_t count, float v) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count; i += int64_t(gridDim.x) * blockDim.x)
    p[i] = v;
}

// Eight independent exp chains per thread (enough to hide the latency), `iters` steps each; the
// store keeps the compiler from dropping the work.
__global__ void exp_probe_kernel(float* sink, int iters) {
  float x[8];
  for (int k = 0; k < 8; ++k) x[k] = -1e-3f * (threadIdx.x + k);
  for (int i = 0; i < iters; ++i)
    for (int k = 0; k < 8; ++k) x[k] = scan_exp(x[k]) - 1.0f;
  float acc = 0.0f;
  for (int k = 0; k < 8; ++k) acc += x[k];
  if (acc == 12345.0f) sink[0] = acc;
}

constexpr int64_t kMaxGrid = 2147483647;

int grid_for(int64_t count, int threads) {
  const int64_t g = (count + threads - 1) / threads;
  return static_cast<int>(g < 65535 ? g : 65535);  // grid-stride loops cover the rest
}

struct DeviceLauncher {
  SeqDType dtype;
  cudaStream_t stream;
  int64_t max_shared = 0;  // CudaCall::max_shared_bytes
  int64_t optin = 48 * 1024;   // the device's opt-in maximum per block
  int64_t budget = 48 * 1024;  // what the plan may use: optin, or less when capped
  int64_t sms = 1;

  Status init(int dev) {
    int max_optin = 0, count = 0;
    Status st = cuda_status(cudaSetDevice(dev), "cudaSetDevice");
    if (st != Status::kOk) return st;
    st = cuda_status(cudaDeviceGetAttribute(&max_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev),
                     "cudaDeviceGetAttribute(MaxSharedMemoryPerBlockOptin)");
    if (st != Status::kOk) return st;
    st = cuda_status(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, dev),
                     "cudaDeviceGetAttribute(MultiProcessorCount)");
    if (st != Status::kOk) return st;
    optin = max_optin;
    budget = max_shared > 0 && max_shared < optin ? max_shared : optin;
    sms = count;
    return Status::kOk;
  }
  int64_t smem_budget() const { return budget; }
  int64_t sm_count() const { return sms; }

  template <typename Kernel, typename... Args>
  Status launch_blocks(Kernel kernel, const BlockPlan& p, Args... args) {
    if (p.blocks > kMaxGrid) return Status::kInvalidSize;
    const int64_t bytes = smem_bytes(p);
    // Always the device's maximum, never this call's size: host threads launching the same
    // kernel concurrently then cannot shrink the limit under one another's launch.
    Status st = cuda_status(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 static_cast<int>(optin)),
                            "cudaFuncSetAttribute(MaxDynamicSharedMemorySize)");
    if (st != Status::kOk) return st;
    kernel<<<static_cast<unsigned>(p.blocks), p.threads, bytes, stream>>>(args..., p);
    return cuda_status(cudaGetLastError(), "kernel launch");
  }

  // The instantiation a call needs: sequence dtype x path (rank one / vector) x block-size
  // class; `launch(Config<Tin, kVector, kMaxThreads>{})` launches that kernel.
  template <typename In, bool kVec, int kThreads>
  struct Config {
    using Tin = In;
    using Vector = std::integral_constant<bool, kVec>;
    using MaxThreads = std::integral_constant<int, kThreads>;
  };
  template <typename Tin, typename Launch>
  static Status by_shape(const BlockPlan& p, bool vector, Launch launch) {
    if (p.threads <= 256) return vector ? launch(Config<Tin, true, 256>{}) : launch(Config<Tin, false, 256>{});
#ifdef CS_CUDA_SIM_KERNELS
    // The simulator's kernel set (CMake COUPLED_MAMBA_CUDA_SIM_KERNELS): half-precision
    // sequence tensors only in blocks of up to 256 threads, to keep the PTX it parses small.
    if constexpr (!std::is_same<Tin, float>::value) {
      g_error = "float16 / bfloat16 kernels for N > 64 are not compiled in this build (COUPLED_MAMBA_CUDA_SIM_KERNELS)";
      return Status::kNotCompiled;
    } else
#endif
    {
      return vector ? launch(Config<Tin, true, 1024>{}) : launch(Config<Tin, false, 1024>{});
    }
  }
  template <typename Launch>
  Status by_config(const BlockPlan& p, bool vector, Launch launch) const {
    switch (dtype) {
      case SeqDType::kFloat32: return by_shape<float>(p, vector, launch);
      case SeqDType::kFloat16: return by_shape<__half>(p, vector, launch);
      case SeqDType::kBFloat16: return by_shape<__nv_bfloat16>(p, vector, launch);
    }
    return Status::kInvalidArgument;
  }

  Status blocks_forward(const ForwardArgs<float>& a, const BlockPlan& p, bool vector, Pass pass,
                        const SegmentArrays& segs, float* work) {
    return by_config(p, vector, [&](auto c) {
      using C = decltype(c);
      return launch_blocks(forward_kernel<typename C::Tin, C::Vector::value, C::MaxThreads::value>, p, a, pass, segs, work);
    });
  }
  Status blocks_backward(const BackwardArgs<float>& g, const BlockPlan& p, bool vector, Pass pass, const Workspace& w,
                         float* work) {
    return by_config(p, vector, [&](auto c) {
      using C = decltype(c);
      return launch_blocks(backward_kernel<typename C::Tin, C::Vector::value, C::MaxThreads::value>, p, g, pass, w, work);
    });
  }

  template <typename Job>
  Status each_index(const Job& job) {
    if (job.count() <= 0) return Status::kOk;
    each_index_kernel<<<grid_for(job.count(), 256), 256, 0, stream>>>(job);
    return cuda_status(cudaGetLastError(), "kernel launch");
  }

  Status sum_leading(const float* in, float* out, int64_t K, int64_t inner, int64_t count) {
    if (count <= 0) return Status::kOk;
    sum_leading_kernel<<<grid_for(count, 256), 256, 0, stream>>>(in, out, K, inner, count);
    return cuda_status(cudaGetLastError(), "reduction kernel launch");
  }
  Status fill(float* p, int64_t count, float v) {
    if (count <= 0) return Status::kOk;
    fill_kernel<<<grid_for(count, 256), 256, 0, stream>>>(p, count, v);
    return cuda_status(cudaGetLastError(), "fill kernel launch");
  }
  Status copy(float* dst, const float* src, int64_t count) {
    return cuda_status(cudaMemcpyAsync(dst, src, sizeof(float) * count, cudaMemcpyDeviceToDevice, stream),
                       "cudaMemcpyAsync");
  }
};

bool valid_dtype(SeqDType d) {
  return d == SeqDType::kFloat32 || d == SeqDType::kFloat16 || d == SeqDType::kBFloat16;
}

// Makes `device` current for one call and restores the previous device afterwards: this
// library's runtime and the caller's (e.g. PyTorch's) share the thread's current context.
struct DeviceGuard {
  int previous = -1;
  DeviceGuard() {
    if (cudaGetDevice(&previous) != cudaSuccess) previous = -1;
  }
  ~DeviceGuard() {
    if (previous >= 0) cudaSetDevice(previous);
  }
};

// Runs a driver with a fresh error state; says why when the plan does not fit the GPU.
template <typename Driver>
Status run(const CudaCall& call, const Sizes& s, CouplingKind kind, bool backward, Driver driver) {
  g_error.clear();
  (void)cudaGetLastError();  // an earlier failure in this runtime must not be reported as ours
  if (!valid_dtype(call.dtype) || call.time_segments < 0 || call.max_shared_bytes < 0) return Status::kInvalidArgument;
  DeviceGuard guard;
  DeviceLauncher launch{call.dtype, static_cast<cudaStream_t>(call.stream), call.max_shared_bytes};
  Status st = launch.init(call.device);
  if (st != Status::kOk) return st;
  st = driver(launch);
  if (st == Status::kInvalidSize && g_error.empty() && s.modalities >= 1 && s.modalities <= kMaxModalities &&
      s.state >= 1 && s.state <= kMaxState) {
    const BlockPlan p = call_plan(s, kind, backward, launch.smem_budget(), call.time_segments, launch.sm_count());
    if (smem_bytes(p) > launch.smem_budget())
      g_error = "the " + std::string(backward ? "backward" : "forward") + " needs " +
                std::to_string(smem_bytes(p)) + " bytes of shared memory per block for M = " +
                std::to_string(s.modalities) + ", N = " + std::to_string(s.state) + "; " +
                (launch.budget < launch.optin ? "the call's max_shared_bytes allows "
                                              : "this GPU allows ") +
                std::to_string(launch.smem_budget());
  }
  return st;
}

}  // namespace
}  // namespace gpu

Status forward_cuda(const ForwardArgs<float>& a, const CudaCall& call, float* workspace) {
  return gpu::run(call, a.size, a.coupling, false, [&](gpu::DeviceLauncher& l) {
    return gpu::forward_driver(a, call.time_segments, workspace, l);
  });
}

int64_t cuda_workspace(const Sizes& size, CouplingKind coupling, bool backward, const CudaCall& call,
                       bool recompute_checkpoints) {
  int sms = 0;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, call.device) != cudaSuccess) {
    (void)cudaGetLastError();
    return -1;
  }
  return gpu::workspace_floats(size, coupling, backward, call.time_segments, sms, recompute_checkpoints);
}

Status backward_cuda(const BackwardArgs<float>& g, const CudaCall& call, float* workspace) {
  return gpu::run(call, g.fwd.size, g.fwd.coupling, true, [&](gpu::DeviceLauncher& l) {
    return gpu::backward_driver(g, call.time_segments, workspace, l);
  });
}

double cuda_exp_floor_ms(int64_t count, int device) {
  (void)cudaGetLastError();
  gpu::DeviceGuard guard;
  if (cudaSetDevice(device) != cudaSuccess) return -1.0;
  cudaDeviceProp prop;
  if (cudaGetDeviceProperties(&prop, device) != cudaSuccess) return -1.0;
  const int threads = 256, blocks = prop.multiProcessorCount * 8;
  const int64_t per_launch = int64_t(threads) * blocks * 8;
  const int64_t want = count / per_launch;
  const int iters = static_cast<int>(want < 1 ? 1 : (want > 100000 ? 100000 : want));
  float* sink = nullptr;
  cudaEvent_t start, stop;
  if (cudaMalloc(&sink, sizeof(float)) != cudaSuccess) return -1.0;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  gpu::exp_probe_kernel<<<blocks, threads>>>(sink, iters);  // warm-up
  cudaEventRecord(start);
  gpu::exp_probe_kernel<<<blocks, threads>>>(sink, iters);
  cudaEventRecord(stop);
  float ms = -1.0f;
  if (cudaEventSynchronize(stop) == cudaSuccess) cudaEventElapsedTime(&ms, start, stop);
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  cudaFree(sink);
  if (ms < 0) return -1.0;
  return double(ms) * double(count) / double(per_launch * iters);
}

const char* cuda_error_text() { return gpu::g_error.c_str(); }

int cuda_device_count() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();  // clear the error a machine without a driver or GPU reports
    gpu::cuda_status(e, "cudaGetDeviceCount");  // keep its text for cuda_error_text()
    return 0;
  }
  return n;
}

int cuda_runtime_version() { return CUDART_VERSION; }

}  // namespace coupled_scan
