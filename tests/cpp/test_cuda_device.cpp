// The CUDA library itself. `test_cuda_device link`: the static library links and, without a GPU,
// fails cleanly (a status and a message, no crash). `test_cuda_device gpu` (ctest label `gpu`):
// forward and backward on the GPU against the naive float64 transcription of the spec, with
// NaN-filled outputs, and bitwise-identical gradients across two runs.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "coupled_scan/coupled_scan_cuda.h"
#include "test_support.h"

using namespace coupled_scan;

namespace {

// A device copy of a host vector (or an uninitialised buffer filled with NaN bytes).
struct DeviceBuffer {
  float* ptr = nullptr;
  size_t n = 0;
  explicit DeviceBuffer(const std::vector<float>& host) : n(host.size()) {
    if (n == 0) return;
    cudaMalloc(&ptr, n * sizeof(float));
    cudaMemcpy(ptr, host.data(), n * sizeof(float), cudaMemcpyHostToDevice);
  }
  explicit DeviceBuffer(size_t count) : n(count) {
    if (n == 0) return;
    cudaMalloc(&ptr, n * sizeof(float));
    cudaMemset(ptr, 0xFF, n * sizeof(float));  // all-ones bits: NaN
  }
  ~DeviceBuffer() { cudaFree(ptr); }
  std::vector<float> host() const {
    std::vector<float> h(n);
    if (n) cudaMemcpy(h.data(), ptr, n * sizeof(float), cudaMemcpyDeviceToHost);
    return h;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
};

CouplingKind kind_of(const std::string& c) {
  if (c == "none") return CouplingKind::kNone;
  if (c == "general") return CouplingKind::kGeneral;
  return CouplingKind::kRankOne;
}

std::vector<float> f32(const Vec& v) { return std::vector<float>(v.begin(), v.end()); }

struct GpuResult {
  std::vector<float> out, last, du, ddelta, dA, dB, dC, dD, dz, dbias, dW, dinit;
  Status fwd, bwd;
};

GpuResult run_gpu(const naive::Problem& p, CouplingKind kind, float alpha, const Vec& dout, const Vec& dlast,
                  int64_t segments) {
  const int64_t Bt = p.Bt, M = p.M, D = p.D, N = p.N, L = p.L;
  DeviceBuffer u(f32(p.u)), delta(f32(p.delta)), A(f32(p.A)), B(f32(p.B)), C(f32(p.C)), Ds(f32(p.Dskip)),
      z(f32(p.z)), bias(f32(p.bias)), W(f32(p.W)), init(f32(p.init)), go(f32(dout)), gl(f32(dlast));
  const InputPointers<float> x{u.ptr, delta.ptr, A.ptr, B.ptr, C.ptr, Ds.ptr, z.ptr, bias.ptr, W.ptr, init.ptr};
  ForwardArgs<float> f = forward_args_for(p, x, L, kind, alpha);
  DeviceBuffer out(Bt * M * D * L), last(Bt * M * D * N), ck(Bt * D * num_cuda_chunks(L, kind) * checkpoint_width(kind, M, N));
  f.out = out.ptr;
  f.last_state = last.ptr;
  f.checkpoints = ck.ptr;
  GpuResult r;
  CudaCall call;
  call.time_segments = segments;
  DeviceBuffer fwork(static_cast<size_t>(std::max<int64_t>(1, cuda_workspace(f.size, kind, false, call))));
  r.fwd = forward_cuda(f, call, fwork.ptr);
  BackwardArgs<float> g;
  g.fwd = f;
  g.checkpoints = ck.ptr;
  g.dout = {go.ptr, M * D * L, D * L, L};
  g.dlast_state = gl.ptr;
  DeviceBuffer du(Bt * M * D * L), dd(Bt * M * D * L), dA(M * D * N), dB(Bt * M * N * L), dC(Bt * M * N * L),
      dD(M * D), dz(Bt * M * D * L), dbias(M * D), dW(M * M), dinit(Bt * M * D * N),
      work(static_cast<size_t>(std::max<int64_t>(1, cuda_workspace(f.size, kind, true, call))));
  g.du = du.ptr, g.ddelta = dd.ptr, g.dA = dA.ptr, g.dB = dB.ptr, g.dC = dC.ptr, g.dD = dD.ptr, g.dz = dz.ptr;
  g.ddelta_bias = dbias.ptr, g.dW = dW.ptr, g.dinitial_state = dinit.ptr;
  r.bwd = backward_cuda(g, call, work.ptr);
  cudaDeviceSynchronize();
  r.out = out.host(), r.last = last.host(), r.du = du.host(), r.ddelta = dd.host(), r.dA = dA.host();
  r.dB = dB.host(), r.dC = dC.host(), r.dD = dD.host(), r.dz = dz.host(), r.dbias = dbias.host(), r.dW = dW.host();
  r.dinit = dinit.host();
  return r;
}

void gpu_case(const Case& c, int64_t segments = 0) {
  std::mt19937_64 rng(7 + c.Bt * 7 + c.M * 131 + c.D * 17 + c.N * 3 + c.L * 1009);
  naive::Problem p = make_problem(c, rng);
  Vec dout, dlast;
  random_upstream(p, true, rng, dout, dlast);
  const naive::Grads ref = naive::run(p, dout, dlast);
  const CouplingKind kind = kind_of(c.coupling);
  const float alpha = c.coupling == "mean" ? 1.0f / c.M : 1.0f;
  const GpuResult r = run_gpu(p, kind, alpha, dout, dlast, segments);
  const std::string name = "gpu Bt=" + std::to_string(c.Bt) + " M=" + std::to_string(c.M) + " D=" +
                           std::to_string(c.D) + " N=" + std::to_string(c.N) + " L=" + std::to_string(c.L) + " " +
                           c.coupling + " segments=" + std::to_string(segments);
  check(r.fwd == Status::kOk && r.bwd == Status::kOk, name + " status (" + cuda_error_text() + ")");
  auto cmp = [&](const char* what, const std::vector<float>& x, const Vec& v, double tol) {
    const double e = rel_err(to_double(x), v);
    check(e <= tol, name + " " + what + " rel err " + std::to_string(e));
  };
  cmp("out", r.out, ref.out, 1e-4);
  cmp("last_state", r.last, ref.last, 1e-4);
  cmp("du", r.du, ref.du, 1e-3);
  cmp("ddelta", r.ddelta, ref.ddelta, 1e-3);
  cmp("dA", r.dA, ref.dA, 1e-3);
  cmp("dB", r.dB, ref.dB, 1e-3);
  cmp("dC", r.dC, ref.dC, 1e-3);
  cmp("dD", r.dD, ref.dD, 1e-3);
  cmp("dz", r.dz, ref.dz, 1e-3);
  cmp("ddelta_bias", r.dbias, ref.dbias, 1e-3);
  cmp("dinit", r.dinit, ref.dinit, 1e-3);
  if (kind == CouplingKind::kGeneral) cmp("dW", r.dW, ref.dW, 1e-3);
  const GpuResult again = run_gpu(p, kind, alpha, dout, dlast, segments);
  auto same = [](const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
  };
  check(same(r.dA, again.dA) && same(r.dB, again.dB) && same(r.dC, again.dC) && same(r.dW, again.dW) &&
            same(r.du, again.du) && same(r.dbias, again.dbias),
        name + " backward bitwise identical across runs");
}

int link_test() {
  const int n = cuda_device_count();
  std::printf("CUDA devices: %d\n", n);
  if (n > 0) {
    std::printf("a GPU is present; the gpu-labelled test checks the kernels\n");
    return 0;
  }
  ForwardArgs<float> f;
  f.size = {1, 1, 1, 1, 1};
  float x = 1.0f;
  f.u = f.delta = f.B = f.C = {&x, 1, 1, 1};
  f.A = &x;
  f.out = &x;
  const Status st = forward_cuda(f, CudaCall{}, nullptr);
  check(st == Status::kCudaError, "without a GPU forward_cuda reports kCudaError");
  check(std::strlen(cuda_error_text()) > 0, std::string("and says why: ") + cuda_error_text());
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IONBF, 0);
  const std::string mode = argc > 1 ? argv[1] : "gpu";
  if (mode == "link") return link_test();
  if (cuda_device_count() == 0) {
    std::printf("FAILED: no CUDA device (this test needs a GPU; CI runs ctest -LE gpu)\n");
    return 1;
  }
  const std::vector<Case> cases = {
      {2, 3, 3, 5, 1, "mean", true},    {1, 1, 2, 3, 7, "mean", true},     {2, 3, 17, 19, 63, "mean", true},
      {1, 2, 2, 3, 2049, "mean", true}, {2, 3, 3, 5, 7, "sum", true},      {2, 4, 3, 1, 65, "none", true},
      {2, 3, 3, 5, 7, "general", true}, {1, 5, 17, 19, 40, "general", true}, {1, 8, 2, 3, 33, "mean", true},
      {2, 3, 70, 64, 50, "mean", true}, {1, 3, 33, 256, 9, "general", true}, {1, 8, 2, 256, 5, "mean", true},
  };
  for (const Case& c : cases) gpu_case(c);
  for (int64_t segments : {1, 3}) {  // forced: one segment, and time segments
    gpu_case({2, 3, 70, 16, 300, "mean", true}, segments);
    gpu_case({2, 3, 40, 9, 300, "none", true}, segments);
  }
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
