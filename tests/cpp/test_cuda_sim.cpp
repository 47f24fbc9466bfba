// The CUDA library's public API on raw device buffers, for a GPU or the GPGPU-Sim simulator
// (tools/sim_check.sh). Every case runs forward and backward through forward_cuda /
// backward_cuda with NaN-filled outputs and workspace, and compares every output and gradient
// with the naive float64 transcription of the spec and with the CPU library, on the same inputs
// (rounded to the sequence dtype first). Then the empty sizes (exact zeros) and the error paths
// (a status and a message, outputs untouched: nothing launched).
//   test_cuda_sim [--quick] [--match TEXT]   --quick: the subset CI runs; --match: only the
//                                            scan cases whose name contains TEXT
// Prints one line per case and a closing line "N passed, M failed"; exits 1 on a failure.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "block_plan.h"
#include "coupled_scan/coupled_scan_cuda.h"
#include "test_support.h"

using namespace coupled_scan;

namespace {

// ---- host copies of the sequence dtypes (inputs are rounded to them before any comparison) ----

// float -> bfloat16 bits, round to nearest even (inputs here are finite).
uint16_t bf16_bits(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}
// float -> float16 bits, round to nearest even; magnitudes below float16's normal range flush to
// zero and above it saturate to the largest finite value (the test inputs stay in between).
uint16_t f16_bits(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u, mag = x & 0x7fffffffu;
  if (mag < 0x38800000u) return static_cast<uint16_t>(sign);  // < 2^-14
  uint32_t r = mag + 0xfffu + ((mag >> 13) & 1u);               // round at bit 13
  if (r >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7bffu);
  return static_cast<uint16_t>(sign | (((r >> 23) - 112u) << 10) | ((r >> 13) & 0x3ffu));
}
float from_bits(uint16_t h, SeqDType t) {
  uint32_t x;
  if (t == SeqDType::kBFloat16) {
    x = uint32_t(h) << 16;
  } else {
    const uint32_t sign = uint32_t(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    x = e == 0 ? sign : (sign | ((e + 112u) << 23) | (m << 13));  // no subnormals produced above
  }
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}
// v rounded to dtype t (in place); returns the bytes to upload.
std::vector<unsigned char> to_dtype(Vec& v, SeqDType t) {
  std::vector<unsigned char> bytes;
  if (t == SeqDType::kFloat32) {
    std::vector<float> f(v.begin(), v.end());
    for (size_t i = 0; i < v.size(); ++i) v[i] = f[i];
    bytes.resize(f.size() * 4);
    if (!f.empty()) std::memcpy(bytes.data(), f.data(), bytes.size());
    return bytes;
  }
  std::vector<uint16_t> h(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    h[i] = t == SeqDType::kBFloat16 ? bf16_bits(float(v[i])) : f16_bits(float(v[i]));
    v[i] = from_bits(h[i], t);
  }
  bytes.resize(h.size() * 2);
  if (!h.empty()) std::memcpy(bytes.data(), h.data(), bytes.size());
  return bytes;
}

const char* dtype_name(SeqDType t) {
  return t == SeqDType::kFloat32 ? "f32" : t == SeqDType::kFloat16 ? "f16" : "bf16";
}

// ---- device memory ----

// A device allocation filled with all-ones bytes (NaN as float32), or a copy of host bytes.
struct DeviceBytes {
  void* ptr = nullptr;
  size_t bytes = 0;
  explicit DeviceBytes(size_t n) : bytes(n) {
    if (n == 0) return;
    check(cudaMalloc(&ptr, n) == cudaSuccess, "cudaMalloc " + std::to_string(n) + " bytes");
    cudaMemset(ptr, 0xFF, n);
  }
  explicit DeviceBytes(const std::vector<unsigned char>& host) : DeviceBytes(host.size()) {
    if (bytes) cudaMemcpy(ptr, host.data(), bytes, cudaMemcpyHostToDevice);
  }
  ~DeviceBytes() {
    if (ptr) cudaFree(ptr);
  }
  DeviceBytes(const DeviceBytes&) = delete;
  DeviceBytes& operator=(const DeviceBytes&) = delete;
  float* f() const { return static_cast<float*>(ptr); }
  std::vector<float> host() const {
    std::vector<float> h(bytes / 4);
    if (bytes) cudaMemcpy(h.data(), ptr, bytes, cudaMemcpyDeviceToHost);
    return h;
  }
};

std::vector<unsigned char> float_bytes(const std::vector<float>& v) {
  std::vector<unsigned char> b(v.size() * 4);
  if (!v.empty()) std::memcpy(b.data(), v.data(), b.size());
  return b;
}
std::vector<unsigned char> float_bytes(const Vec& v) { return float_bytes(std::vector<float>(v.begin(), v.end())); }

bool all_nan(const std::vector<float>& v) {
  for (float x : v)
    if (x == x) return false;
  return true;
}
bool all_equal(const std::vector<float>& v, float want) {
  for (float x : v)
    if (!(x == want)) return false;
  return true;
}

CouplingKind kind_of(const std::string& c) {
  if (c == "none") return CouplingKind::kNone;
  if (c == "general") return CouplingKind::kGeneral;
  return CouplingKind::kRankOne;
}

int64_t g_device_smem = 0;  // the device's opt-in shared memory per block
int g_device_sms = 0;

// ---- one forward + backward case ----

struct SimCase {
  Case c;
  SeqDType dtype = SeqDType::kFloat32;
  int64_t segments = 0;        // CudaCall::time_segments (0: automatic)
  bool recompute = false;      // backward without checkpoints
  int64_t pad = 0;             // extra elements between sequence rows
  int64_t max_shared = 0;      // CudaCall::max_shared_bytes
  bool quick = false;          // in the --quick subset
  std::vector<int64_t> lengths;  // per-sample lengths (device memory); empty: none
};

// The CPU library on the same (rounded) inputs: forward and backward in float32.
struct CpuResult {
  std::vector<float> out, last, du, ddelta, dA, dB, dC, dD, dz, dbias, dW, dinit;
};
CpuResult run_cpu(const naive::Problem& p, CouplingKind kind, double alpha, const Vec& dout, const Vec& dlast) {
  const int64_t Bt = p.Bt, M = p.M, D = p.D, N = p.N, L = p.L;
  std::vector<float> u = cast<float>(p.u), delta = cast<float>(p.delta), A = cast<float>(p.A), B = cast<float>(p.B),
                     C = cast<float>(p.C), Ds = cast<float>(p.Dskip), z = cast<float>(p.z), bias = cast<float>(p.bias),
                     W = cast<float>(p.W), init = cast<float>(p.init), go = cast<float>(dout), gl = cast<float>(dlast);
  const InputPointers<float> x{u.data(), delta.data(), A.data(), B.data(), C.data(), data_or_null(Ds),
                               data_or_null(z), data_or_null(bias), W.data(), data_or_null(init)};
  ForwardArgs<float> f = forward_args_for(p, x, L, kind, alpha);
  f.lengths = p.lengths.empty() ? nullptr : p.lengths.data();
  CpuResult r;
  r.out.resize(Bt * M * D * L);
  r.last.resize(Bt * M * D * N);
  f.out = r.out.data();
  f.last_state = r.last.data();
  check(forward_cpu(f) == Status::kOk, "cpu forward");
  BackwardArgs<float> g;
  g.fwd = f;
  g.dout = {go.data(), M * D * L, D * L, L};
  g.dlast_state = data_or_null(gl);
  r.du.resize(Bt * M * D * L), r.ddelta.resize(r.du.size()), r.dz.resize(r.du.size()), r.dA.resize(M * D * N);
  r.dB.resize(Bt * M * N * L), r.dC.resize(r.dB.size()), r.dD.resize(M * D), r.dbias.resize(M * D);
  r.dW.resize(M * M), r.dinit.resize(Bt * M * D * N);
  g.du = r.du.data(), g.ddelta = r.ddelta.data(), g.dz = r.dz.data(), g.dA = r.dA.data(), g.dB = r.dB.data();
  g.dC = r.dC.data(), g.dD = r.dD.data(), g.ddelta_bias = r.dbias.data(), g.dW = r.dW.data();
  g.dinitial_state = r.dinit.data();
  check(backward_cpu(g) == Status::kOk, "cpu backward");
  return r;
}

std::string g_match;  // --match: run only scan cases whose name contains it

// Returns whether the case ran (--match may skip it).
bool sim_case(const SimCase& sc) {
  const auto t0 = std::chrono::steady_clock::now();
  const Case& c = sc.c;
  std::mt19937_64 rng(11 + c.Bt * 7 + c.M * 131 + c.D * 17 + c.N * 3 + c.L * 1009 + int(sc.dtype));
  naive::Problem p = make_problem(c, rng);
  Vec dout, dlast;
  random_upstream(p, c.with_optional, rng, dout, dlast);
  const int64_t Bt = p.Bt, M = p.M, D = p.D, N = p.N, L = p.L, Lp = L + sc.pad;
  // With lengths, inputs at padded steps are NaN (never read: reading one would show).
  p.lengths = sc.lengths;
  auto padded_steps = [&](int64_t R, auto fn) {
    for (int64_t b = 0; b < Bt && !p.lengths.empty(); ++b)
      for (int64_t mr = 0; mr < M * R; ++mr)
        for (int64_t t = p.lengths[b]; t < L; ++t) fn((b * M * R + mr) * L + t);
  };
  const double nan = std::nan("");
  padded_steps(D, [&](int64_t i) {
    p.u[i] = p.delta[i] = dout[i] = nan;
    if (!p.z.empty()) p.z[i] = nan;
  });
  padded_steps(N, [&](int64_t i) { p.B[i] = p.C[i] = nan; });
  std::string lengths_text;
  for (int64_t n : p.lengths) lengths_text += (lengths_text.empty() ? " lengths=" : ",") + std::to_string(n);
  const CouplingKind kind = kind_of(c.coupling);
  const double alpha = c.coupling == "mean" ? 1.0 / M : 1.0;
  const int64_t limit = sc.max_shared > 0 && sc.max_shared < g_device_smem ? sc.max_shared : g_device_smem;
  const gpu::BlockPlan plan = gpu::plan_for({Bt, M, D, N, L}, kind, true, limit);
  char name[400];
  std::snprintf(name, sizeof(name),
                "Bt=%lld M=%lld D=%lld N=%lld L=%lld %s %s%s segments=%lld%s%s%s | backward plan %lld B sub=%d tiles=%d",
                (long long)Bt, (long long)M, (long long)D, (long long)N, (long long)L, c.coupling.c_str(),
                dtype_name(sc.dtype), c.with_optional ? " +optional" : " -optional", (long long)sc.segments,
                sc.recompute ? " recomputed-checkpoints" : "", sc.pad ? " padded-rows" : "", lengths_text.c_str(),
                (long long)gpu::smem_bytes(plan), plan.sub, plan.tiles);
  if (!g_match.empty() && std::string(name).find(g_match) == std::string::npos) return false;
  // Sequence tensors in the dtype (rounded in place, so the references see the same values).
  auto seq_bytes = [&](Vec& v, int64_t rows) {
    to_dtype(v, sc.dtype);
    Vec padded = to_double(padded_rows<float>(v, Bt * M * rows, L, Lp));
    for (int64_t r = 0; r < Bt * M * rows; ++r)
      for (int64_t t = L; t < Lp; ++t) padded[r * Lp + t] = 0.0;  // the gaps are never read; a valid value
    return to_dtype(padded, sc.dtype);
  };
  DeviceBytes u(seq_bytes(p.u, D)), delta(seq_bytes(p.delta, D)), B(seq_bytes(p.B, N)), C(seq_bytes(p.C, N)),
      go(seq_bytes(dout, D)), z(p.z.empty() ? std::vector<unsigned char>() : seq_bytes(p.z, D));
  DeviceBytes A(float_bytes(p.A)), Ds(float_bytes(p.Dskip)), bias(float_bytes(p.bias)), W(float_bytes(p.W)),
      init(float_bytes(p.init)), gl(float_bytes(dlast));
  std::vector<unsigned char> lengths_bytes(p.lengths.size() * sizeof(int64_t));
  if (!p.lengths.empty()) std::memcpy(lengths_bytes.data(), p.lengths.data(), lengths_bytes.size());
  DeviceBytes lengths(lengths_bytes);
  const naive::Grads ref = naive::run(p, dout, dlast);
  const CpuResult cpu = run_cpu(p, kind, alpha, dout, dlast);

  const InputPointers<float> x{u.f(), delta.f(), A.f(), B.f(), C.f(), Ds.f(), z.f(), bias.f(), W.f(), init.f()};
  ForwardArgs<float> f = forward_args_for(p, x, Lp, kind, alpha);
  f.lengths = static_cast<const int64_t*>(lengths.ptr);
  const size_t fsz = 4;
  DeviceBytes out(Bt * M * D * L * fsz), last(c.with_optional ? Bt * M * D * N * fsz : 0),
      ck(sc.recompute ? 0 : Bt * D * num_cuda_chunks(L, kind) * checkpoint_width(kind, M, N) * fsz);
  f.out = out.f();
  f.last_state = last.f();
  f.checkpoints = ck.f();
  CudaCall call;
  call.dtype = sc.dtype;
  call.time_segments = sc.segments;
  call.max_shared_bytes = sc.max_shared;
  const int64_t fws = cuda_workspace(f.size, kind, false, call), bws = cuda_workspace(f.size, kind, true, call, sc.recompute);
  DeviceBytes fwork(std::max<int64_t>(1, fws) * fsz), bwork(std::max<int64_t>(1, bws) * fsz);
  const Status fst = forward_cuda(f, call, fwork.f());
  const std::string ferr = cuda_error_text();

  BackwardArgs<float> g;
  g.fwd = f;
  g.checkpoints = ck.f();
  g.dout = {go.f(), M * D * Lp, D * Lp, Lp};
  g.dlast_state = gl.f();
  const bool opt = c.with_optional;
  DeviceBytes du(Bt * M * D * L * fsz), dd(du.bytes), dA(M * D * N * fsz), dB(Bt * M * N * L * fsz), dC(dB.bytes),
      dD(opt ? M * D * fsz : 0), dz(opt ? du.bytes : 0), dbias(dD.bytes), dW(M * M * fsz),
      dinit(opt ? Bt * M * D * N * fsz : 0);
  g.du = du.f(), g.ddelta = dd.f(), g.dA = dA.f(), g.dB = dB.f(), g.dC = dC.f(), g.dD = dD.f(), g.dz = dz.f();
  g.ddelta_bias = dbias.f(), g.dW = dW.f(), g.dinitial_state = dinit.f();
  const Status bst = backward_cuda(g, call, bwork.f());
  const std::string berr = cuda_error_text();
  const cudaError_t sync = cudaDeviceSynchronize();

  const int failed_before = g_failed;
  check(fst == Status::kOk, std::string(name) + " forward status " + status_string(fst) + " " + ferr);
  check(bst == Status::kOk, std::string(name) + " backward status " + status_string(bst) + " " + berr);
  check(sync == cudaSuccess, std::string(name) + " synchronize: " + cudaGetErrorString(sync));
  auto cmp = [&](const char* what, const DeviceBytes& got, const Vec& want, const std::vector<float>& cpu_value,
                 double tol) {
    const Vec gv = to_double(got.host());
    const double e = rel_err(gv, want), ec = rel_err(gv, to_double(cpu_value));
    check(e <= tol, std::string(name) + " " + what + " vs naive: rel err " + std::to_string(e));
    check(ec <= tol, std::string(name) + " " + what + " vs CPU library: rel err " + std::to_string(ec));
  };
  cmp("out", out, ref.out, cpu.out, 1e-4);
  cmp("du", du, ref.du, cpu.du, 1e-3);
  cmp("ddelta", dd, ref.ddelta, cpu.ddelta, 1e-3);
  cmp("dA", dA, ref.dA, cpu.dA, 1e-3);
  cmp("dB", dB, ref.dB, cpu.dB, 1e-3);
  cmp("dC", dC, ref.dC, cpu.dC, 1e-3);
  if (opt) {
    cmp("last_state", last, ref.last, cpu.last, 1e-4);
    cmp("dD", dD, ref.dD, cpu.dD, 1e-3);
    cmp("dz", dz, ref.dz, cpu.dz, 1e-3);
    cmp("ddelta_bias", dbias, ref.dbias, cpu.dbias, 1e-3);
    cmp("dinitial_state", dinit, ref.dinit, cpu.dinit, 1e-3);
  }
  if (kind == CouplingKind::kGeneral) cmp("dW", dW, ref.dW, cpu.dW, 1e-3);
  else check(all_equal(dW.host(), 0.0f), std::string(name) + " dW zero without a general W");
  if (!p.lengths.empty()) {  // exact zeros at the padded steps
    const std::vector<float> o = out.host(), hu = du.host(), hd = dd.host(), hz = dz.host(), hB = dB.host(),
                             hC = dC.host();
    bool zeros = true;
    padded_steps(D, [&](int64_t i) {
      zeros = zeros && o[i] == 0.0f && hu[i] == 0.0f && hd[i] == 0.0f && (!opt || hz[i] == 0.0f);
    });
    padded_steps(N, [&](int64_t i) { zeros = zeros && hB[i] == 0.0f && hC[i] == 0.0f; });
    check(zeros, std::string(name) + " out, du, ddelta, dz, dB, dC exactly 0 past each length");
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("%s %s (%.1f s)\n", g_failed == failed_before ? "ok  " : "FAIL", name, secs);
  return true;
}

// ---- empty sizes ----

// Batch, D or L zero (alone and together; N = 0 is refused): every gradient exact zeros, d
// initial_state = d last_state (dB and dC are not empty when only D is zero), last state = the
// initial state.
void empty_cases() {
  for (const char* coupling : {"mean", "general"})
    for (int mask = 1; mask < 8; ++mask) {
      const int64_t Bt = mask & 1 ? 0 : 2, D = mask & 2 ? 0 : 3, L = mask & 4 ? 0 : 5, M = 3, N = 4;
      const CouplingKind kind = kind_of(coupling);
      const std::vector<float> initv(Bt * M * D * N, 1.5f), dlastv(initv.size(), -2.0f);
      DeviceBytes x(float_bytes(std::vector<float>(64, 0.5f))), W(float_bytes(std::vector<float>(M * M, 0.25f))),
          init(float_bytes(initv)), dlast(float_bytes(dlastv)), last(initv.size() * 4);
      ForwardArgs<float> f;
      f.size = {Bt, M, D, N, L};
      f.u = f.delta = f.B = f.C = {x.f(), 0, 0, 0};
      f.A = x.f();
      f.coupling = kind;
      f.W = W.f();
      f.initial_state = init.f();
      f.last_state = last.f();
      const Status fst = forward_cuda(f, CudaCall{}, nullptr);
      BackwardArgs<float> g;
      g.fwd = f;
      g.dout = {x.f(), 0, 0, 0};
      g.dlast_state = dlast.f();
      DeviceBytes dA(M * D * N * 4), dB(Bt * M * N * L * 4), dC(dB.bytes), dD(M * D * 4), dbias(dD.bytes),
          dW(M * M * 4), dinit(initv.size() * 4), du(Bt * M * D * L * 4), dd(du.bytes);
      g.du = du.f(), g.ddelta = dd.f(), g.dA = dA.f(), g.dB = dB.f(), g.dC = dC.f(), g.dD = dD.f();
      g.ddelta_bias = dbias.f(), g.dW = dW.f(), g.dinitial_state = dinit.f();
      const Status bst = backward_cuda(g, CudaCall{}, nullptr);
      cudaDeviceSynchronize();
      const std::string name = std::string("empty ") + coupling + " Bt=" + std::to_string(Bt) + " D=" +
                               std::to_string(D) + " L=" + std::to_string(L);
      const int failed_before = g_failed;
      check(fst == Status::kOk && bst == Status::kOk, name + " status " + cuda_error_text());
      check(last.host() == initv, name + " last_state = initial_state");
      check(all_equal(dA.host(), 0) && all_equal(dB.host(), 0) && all_equal(dC.host(), 0) &&
                all_equal(dD.host(), 0) && all_equal(dbias.host(), 0) && all_equal(dW.host(), 0),
            name + " gradients exactly zero");
      check(dinit.host() == dlastv, name + " d initial_state = d last_state");
      std::printf("%s %s (dB: %lld elements)\n", g_failed == failed_before ? "ok  " : "FAIL", name.c_str(),
                  (long long)(Bt * M * N * L));
    }
}

// ---- error paths ----

// A call that must fail before launching anything: the status, and the outputs still NaN.
void error_case(const std::string& name, Sizes s, CouplingKind kind, CudaCall call, Status want, bool null_W = false,
                bool null_dout = false, const char* message = nullptr) {
  const int64_t M = s.modalities, N = s.state, D = s.channels, L = s.length, Bt = s.batch;
  const size_t seq = Bt * M * D * L, bc = Bt * M * N * L;
  std::vector<float> ones(std::max<size_t>({seq, bc, size_t(M * D * N), size_t(M * M)}), 0.5f);
  DeviceBytes in(float_bytes(ones)), out(seq * 4), ck(Bt * D * num_cuda_chunks(L, kind) * M * N * 4 + 4),
      work(1 << 20), du(seq * 4), dA(M * D * N * 4);
  ForwardArgs<float> f;
  f.size = s;
  f.u = f.delta = {in.f(), M * D * L, D * L, L};
  f.B = f.C = {in.f(), M * N * L, N * L, L};
  f.A = in.f();
  f.coupling = kind;
  f.W = null_W ? nullptr : in.f();
  f.out = out.f();
  f.checkpoints = ck.f();
  Status st = forward_cuda(f, call, work.f());
  const std::string ferr = cuda_error_text();
  BackwardArgs<float> g;
  g.fwd = f;
  g.checkpoints = ck.f();
  g.dout = null_dout ? SeqTensor<const float>{} : f.u;
  g.du = g.ddelta = du.f();
  g.dA = g.dB = g.dC = dA.f();
  const Status bst = backward_cuda(g, call, work.f());
  const std::string berr = cuda_error_text();
  cudaDeviceSynchronize();
  const int failed_before = g_failed;
  if (!null_dout) check(st == want, name + ": forward gives " + status_string(st) + ", expected " + status_string(want));
  check(bst == want, name + ": backward gives " + status_string(bst) + ", expected " + status_string(want));
  if (message) {
    check(ferr.find(message) != std::string::npos || null_dout, name + ": forward message \"" + ferr + "\"");
    check(berr.find(message) != std::string::npos, name + ": backward message \"" + berr + "\"");
  }
  check((null_dout || all_nan(out.host())) && all_nan(du.host()) && all_nan(dA.host()), name + ": outputs untouched");
  std::printf("%s error path: %s -> %s%s%s\n", g_failed == failed_before ? "ok  " : "FAIL", name.c_str(),
              status_string(bst), berr.empty() ? "" : ": ", berr.c_str());
}

void error_cases() {
  const CouplingKind r1 = CouplingKind::kRankOne, gen = CouplingKind::kGeneral;
  CudaCall small;
  small.max_shared_bytes = 20000;  // below the smallest layout of M = 8, N = 256
  error_case("M=8 N=256 in 20000 bytes of shared memory", {1, 8, 2, 256, 3}, r1, small, Status::kInvalidSize, false,
             false, "bytes of shared memory per block");
  error_case("M=9", {1, 9, 2, 3, 3}, r1, CudaCall{}, Status::kInvalidSize);
  error_case("N=257", {1, 2, 2, 257, 3}, r1, CudaCall{}, Status::kInvalidSize);
  error_case("general W without W", {1, 2, 2, 3, 3}, gen, CudaCall{}, Status::kNullPointer, true);
  error_case("backward without dout", {1, 2, 2, 3, 3}, r1, CudaCall{}, Status::kNullPointer, false, true);
  CudaCall bad_dtype;
  bad_dtype.dtype = static_cast<SeqDType>(7);
  error_case("unknown sequence dtype", {1, 2, 2, 3, 3}, r1, bad_dtype, Status::kInvalidArgument);
  CudaCall bad_segments;
  bad_segments.time_segments = -1;
  error_case("time_segments = -1", {1, 2, 2, 3, 3}, r1, bad_segments, Status::kInvalidArgument);
#ifdef CS_CUDA_SIM_KERNELS
  CudaCall half;
  half.dtype = SeqDType::kFloat16;
  error_case("float16 at N = 72 in the simulator's kernel set", {1, 2, 2, 72, 3}, r1, half, Status::kNotCompiled,
             false, false, "not compiled");
#endif
}

// ---- the cases ----

std::vector<SimCase> all_cases() {
  using T = SeqDType;
  std::vector<SimCase> v;
  auto add = [&](Case c, bool quick, T dtype = T::kFloat32, int64_t segments = 0) {
    SimCase s;
    s.c = c, s.quick = quick, s.dtype = dtype, s.segments = segments;
    v.push_back(s);
    return &v.back();
  };
  // Couplings, odd sizes (L = 1, 7, 63, several chunks; N not a multiple of 8; M = 1, 5, 8).
  add({2, 3, 3, 5, 1, "mean", true}, true);
  add({1, 1, 2, 3, 7, "mean", false}, true);
  add({2, 3, 33, 19, 63, "mean", true}, false);
  add({2, 3, 3, 5, 7, "sum", true}, true);
  add({1, 5, 3, 4, 9, "sum", false}, false);
  add({2, 4, 3, 1, 65, "none", true}, true);
  add({1, 1, 5, 9, 63, "none", false}, false);
  add({2, 3, 3, 5, 7, "general", true}, true);
  add({1, 5, 17, 19, 40, "general", true}, false);
  add({1, 1, 2, 4, 20, "general", false}, false);
  add({1, 8, 2, 3, 33, "mean", true}, false);
  // The register-budget instantiation for large N (blocks of more than 256 threads), and M = 8,
  // N = 256, which needs tiled dB / dC sums within sm_86's 99 KB.
  add({1, 8, 2, 256, 5, "mean", true}, true);
  add({1, 8, 2, 256, 3, "general", true}, false);
  add({1, 3, 33, 72, 9, "none", true}, false);
  // Time segments off (1), forced on (3), and automatic over several chunks.
  add({2, 3, 40, 9, 130, "mean", true}, false, T::kFloat32, 1);
  add({2, 3, 40, 9, 130, "mean", true}, false, T::kFloat32, 3);
  add({1, 3, 6, 9, 130, "mean", true}, true, T::kFloat32, 3);
  add({1, 2, 6, 5, 200, "none", true}, true, T::kFloat32, 3);
  add({1, 2, 6, 5, 130, "mean", false}, false, T::kFloat32, 0);  // automatic: 2 segments
  // "sum" (W = ones) grows like (sum_m a^m_t)^L, beyond float32 at long L: a short L in 2 segments.
  add({1, 2, 6, 5, 40, "sum", false}, false, T::kFloat32, 2);
  // Half-precision sequence tensors, both paths.
  add({2, 3, 17, 19, 40, "mean", true}, true, T::kFloat16);
  add({1, 3, 5, 12, 21, "general", true}, false, T::kFloat16);
  add({2, 3, 17, 19, 40, "mean", true}, false, T::kBFloat16);
  add({1, 3, 5, 12, 21, "general", true}, true, T::kBFloat16);
  add({1, 2, 6, 5, 100, "none", true}, false, T::kBFloat16, 3);
  // Checkpoints recomputed by the backward; strided rows; a shared-memory cap forcing 3 tiles.
  add({2, 3, 17, 19, 63, "mean", true}, true)->recompute = true;
  add({1, 3, 5, 12, 21, "general", true}, false)->recompute = true;
  add({1, 2, 6, 5, 200, "none", true}, false, T::kFloat32, 3)->recompute = true;
  add({2, 3, 17, 19, 37, "mean", true}, false)->pad = 5;
  {
    SimCase* s = add({2, 3, 17, 19, 37, "mean", true}, true);
    const gpu::BlockPlan base = gpu::make_plan({2, 3, 17, 19, 37}, CouplingKind::kRankOne, true, 0, 1);
    s->max_shared = gpu::smem_bytes(gpu::layout(base, true, 1, 3));
  }
  // Per-sample lengths (0, 1, L and others; inputs at padded steps are NaN): both paths, time
  // segments with lengths ending before, inside and at a segment's end, the 1024-thread blocks.
  add({5, 3, 17, 19, 40, "mean", true}, true, T::kFloat32, 3)->lengths = {0, 1, 40, 23, 16};
  add({4, 3, 5, 12, 21, "general", true}, true, T::kBFloat16)->lengths = {21, 0, 1, 9};
  add({4, 3, 33, 19, 63, "mean", true}, false, T::kFloat32, 1)->lengths = {63, 0, 1, 47};
  add({4, 5, 17, 19, 40, "general", true}, false)->lengths = {40, 0, 1, 25};
  add({4, 2, 6, 5, 200, "none", true}, false, T::kFloat32, 3)->lengths = {200, 0, 1, 67};
  add({3, 2, 6, 5, 40, "sum", false}, false, T::kFloat32, 2)->lengths = {40, 0, 13};
  add({3, 8, 2, 256, 5, "mean", true}, false)->lengths = {0, 5, 3};
  {
    SimCase* s = add({4, 2, 6, 5, 130, "mean", true}, false, T::kFloat32, 3);
    s->lengths = {130, 0, 1, 70};
    s->recompute = true;
  }
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IONBF, 0);
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") quick = true;
    else if (a == "--match" && i + 1 < argc) g_match = argv[++i];
    else return std::printf("usage: test_cuda_sim [--quick] [--match TEXT]\n"), 2;
  }
  const auto t0 = std::chrono::steady_clock::now();
  const int devices = cuda_device_count();
  if (devices == 0) {
    std::printf("FAILED: no CUDA device (%s)\n0 passed, 1 failed\n", cuda_error_text());
    return 1;
  }
  int smem = 0;
  cudaDeviceGetAttribute(&smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, 0);
  cudaDeviceGetAttribute(&g_device_sms, cudaDevAttrMultiProcessorCount, 0);
  g_device_smem = smem;
  std::printf("device 0: %d bytes of opt-in shared memory per block, %d SMs; %s set\n", smem, g_device_sms,
              quick ? "quick" : "full");
  int cases = 0;
  for (const SimCase& c : all_cases())
    if ((!quick || c.quick) && sim_case(c)) ++cases;
  if (g_match.empty()) {
    empty_cases();
    error_cases();
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("%d scan cases + 14 empty-size + error paths in %.0f s\n", cases, secs);
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
