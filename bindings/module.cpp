// pybind11 module `coupled_mamba._C`: a thin, torch-free bridge. Python fills one typed `ScanCall`
// (sizes, pointers as integers, strides, dtype and coupling as enums, device and stream); a
// misspelt field is an AttributeError at the boundary, never a silently missing input. Shape,
// dtype and device checks that name the argument happen in python/coupled_mamba/ops/validation.py.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>

#include "coupled_scan/causal_conv.h"
#include "coupled_scan/coupled_scan.h"
#ifdef CS_WITH_CUDA
#include "coupled_scan/coupled_scan_cuda.h"
#endif

namespace py = pybind11;
using namespace coupled_scan;

namespace {

// dtype of the sequence tensors. On the CPU it is also the compute dtype (float32 / float64);
// the CUDA kernels read float32 / float16 / bfloat16 and compute in float32.
enum class DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

// A (Bt, M, R, L) tensor: data pointer and strides, in one of SeqTensor's two layouts (time axis
// contiguous, or step-major: stride_row 1).
struct Seq {
  std::uintptr_t data = 0;
  int64_t stride_batch = 0;
  int64_t stride_modality = 0;
  int64_t stride_row = 0;
  int64_t stride_time = 1;
};

// Everything one forward or backward call needs. Pointers are addresses (0 = absent).
struct ScanCall {
  int64_t batch = 0, modalities = 0, channels = 0, state = 0, length = 0;
  DType dtype = DType::kFloat32;
  Seq u, delta, B, C, z, dout;
  std::uintptr_t A = 0, D = 0, delta_bias = 0, W = 0, initial_state = 0;
  std::uintptr_t lengths = 0;  // (Bt,) int64

  std::uintptr_t out = 0, last_state = 0, checkpoints = 0, dlast_state = 0;
  std::uintptr_t du = 0, ddelta = 0, dA = 0, dB = 0, dC = 0, dD = 0, dz = 0, ddelta_bias = 0, dW = 0,
                 dinitial_state = 0;
  // Optional strided layouts of out, du, d delta, dB, dC, dz (data 0: the contiguous pointers
  // above). CPU only.
  Seq out_rows, du_rows, ddelta_rows, dB_rows, dC_rows, dz_rows;
  bool delta_softplus = false;
  CouplingKind coupling = CouplingKind::kRankOne;
  double alpha = 1.0;
  int num_threads = 1;
  // CUDA only: device index, cudaStream_t address, time segments (0 automatic), workspace floats.
  int device = 0;
  std::uintptr_t stream = 0;
  int64_t time_segments = 0;
  std::uintptr_t workspace = 0;
};

template <typename T>
T* ptr(std::uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

template <typename T>
SeqTensor<const T> seq(const Seq& s) {
  return {ptr<const T>(s.data), s.stride_batch, s.stride_modality, s.stride_row, s.stride_time};
}

template <typename T>
SeqTensor<T> out_seq(const Seq& s) {
  return {ptr<T>(s.data), s.stride_batch, s.stride_modality, s.stride_row, s.stride_time};
}

Sizes sizes(const ScanCall& c) { return {c.batch, c.modalities, c.channels, c.state, c.length}; }

// T: the type of parameters, states and results; S: the type the sequence pointers point at
// (the same as T on the CPU; the CUDA kernels read half types through float-typed pointers).
template <typename T>
ForwardArgs<T> forward_args(const ScanCall& c) {
  ForwardArgs<T> a;
  a.size = sizes(c);
  a.u = seq<T>(c.u);
  a.delta = seq<T>(c.delta);
  a.A = ptr<const T>(c.A);
  a.B = seq<T>(c.B);
  a.C = seq<T>(c.C);
  a.D = ptr<const T>(c.D);
  a.z = seq<T>(c.z);
  a.delta_bias = ptr<const T>(c.delta_bias);
  a.delta_softplus = c.delta_softplus;
  a.coupling = c.coupling;
  a.alpha = static_cast<T>(c.alpha);
  a.W = ptr<const T>(c.W);
  a.initial_state = ptr<const T>(c.initial_state);
  a.lengths = ptr<const int64_t>(c.lengths);
  a.out = ptr<T>(c.out);
  a.last_state = ptr<T>(c.last_state);
  a.checkpoints = ptr<T>(c.checkpoints);
  a.num_threads = c.num_threads;
  a.out_rows = out_seq<T>(c.out_rows);
  return a;
}

template <typename T>
BackwardArgs<T> backward_args(const ScanCall& c) {
  BackwardArgs<T> g;
  g.fwd = forward_args<T>(c);
  g.fwd.out = nullptr;
  g.fwd.last_state = nullptr;
  g.fwd.checkpoints = nullptr;
  g.checkpoints = ptr<const T>(c.checkpoints);
  g.dout = seq<T>(c.dout);
  g.dlast_state = ptr<const T>(c.dlast_state);
  g.du = ptr<T>(c.du);
  g.ddelta = ptr<T>(c.ddelta);
  g.dA = ptr<T>(c.dA);
  g.dB = ptr<T>(c.dB);
  g.dC = ptr<T>(c.dC);
  g.dD = ptr<T>(c.dD);
  g.dz = ptr<T>(c.dz);
  g.ddelta_bias = ptr<T>(c.ddelta_bias);
  g.dW = ptr<T>(c.dW);
  g.dinitial_state = ptr<T>(c.dinitial_state);
  g.du_rows = out_seq<T>(c.du_rows);
  g.ddelta_rows = out_seq<T>(c.ddelta_rows);
  g.dB_rows = out_seq<T>(c.dB_rows);
  g.dC_rows = out_seq<T>(c.dC_rows);
  g.dz_rows = out_seq<T>(c.dz_rows);
  return g;
}

void raise_on(Status st, const char* what) {
  if (st != Status::kOk)
    throw std::runtime_error(std::string("coupled_scan ") + what + " failed: " + status_string(st));
}

// Runs a library entry point on its arguments without the GIL.
template <typename Entry, typename... Args>
Status without_gil(Entry entry, const Args&... args) {
  py::gil_scoped_release release;
  return entry(args...);
}

void forward_cpu_py(const ScanCall& c) {
  Status st;
  if (c.dtype == DType::kFloat32) st = without_gil(&forward_cpu<float>, forward_args<float>(c));
  else if (c.dtype == DType::kFloat64) st = without_gil(&forward_cpu<double>, forward_args<double>(c));
  else throw std::invalid_argument("coupled_scan: the CPU kernels compute in float32 or float64");
  raise_on(st, "forward (CPU)");
}

void backward_cpu_py(const ScanCall& c) {
  Status st;
  if (c.dtype == DType::kFloat32) st = without_gil(&backward_cpu<float>, backward_args<float>(c));
  else if (c.dtype == DType::kFloat64) st = without_gil(&backward_cpu<double>, backward_args<double>(c));
  else throw std::invalid_argument("coupled_scan: the CPU kernels compute in float32 or float64");
  raise_on(st, "backward (CPU)");
}

// One call of the fused causal conv + SiLU (CPU): contiguous (channels, rows, length) tensors, or
// (G, rows, length, channels / G) with step_major_groups = G > 0.
struct ConvCall {
  int64_t channels = 0, rows = 0, length = 0, width = 0, step_major_groups = 0;
  DType dtype = DType::kFloat32;
  std::uintptr_t x = 0, weight = 0, bias = 0, y = 0, dy = 0, dx = 0, dweight = 0, dbias = 0;
  int num_threads = 1;
};

template <typename T>
CausalConvBackwardArgs<T> conv_args(const ConvCall& c) {
  CausalConvBackwardArgs<T> g;
  CausalConvArgs<T>& a = g.fwd;
  a.channels = c.channels, a.rows = c.rows, a.length = c.length, a.width = c.width;
  a.x = ptr<const T>(c.x), a.weight = ptr<const T>(c.weight), a.bias = ptr<const T>(c.bias), a.y = ptr<T>(c.y);
  a.num_threads = c.num_threads;
  a.step_major_groups = c.step_major_groups;
  g.dy = ptr<const T>(c.dy), g.dx = ptr<T>(c.dx), g.dweight = ptr<T>(c.dweight), g.dbias = ptr<T>(c.dbias);
  return g;
}

void conv_forward_cpu_py(const ConvCall& c) {
  Status st;
  if (c.dtype == DType::kFloat32) st = without_gil(&causal_conv_silu_forward_cpu<float>, conv_args<float>(c).fwd);
  else if (c.dtype == DType::kFloat64) st = without_gil(&causal_conv_silu_forward_cpu<double>, conv_args<double>(c).fwd);
  else throw std::invalid_argument("coupled_scan: the CPU conv computes in float32 or float64");
  raise_on(st, "causal conv forward (CPU)");
}

void conv_backward_cpu_py(const ConvCall& c) {
  Status st;
  if (c.dtype == DType::kFloat32) st = without_gil(&causal_conv_silu_backward_cpu<float>, conv_args<float>(c));
  else if (c.dtype == DType::kFloat64) st = without_gil(&causal_conv_silu_backward_cpu<double>, conv_args<double>(c));
  else throw std::invalid_argument("coupled_scan: the CPU conv computes in float32 or float64");
  raise_on(st, "causal conv backward (CPU)");
}

// Checkpoints (saved states) along time for `length` steps on the CPU or the GPU.
int64_t num_checkpoints(CouplingKind kind, int64_t length, bool on_cuda) {
#ifdef CS_WITH_CUDA
  if (on_cuda) return num_cuda_chunks(length, kind);
#endif
  if (on_cuda) throw std::invalid_argument("coupled_scan: this build has no CUDA kernels");
  return num_chunks(kind, length);
}

#ifdef CS_WITH_CUDA
CudaCall cuda_call(const ScanCall& c) {
  CudaCall call;
  switch (c.dtype) {
    case DType::kFloat32: call.dtype = SeqDType::kFloat32; break;
    case DType::kFloat16: call.dtype = SeqDType::kFloat16; break;
    case DType::kBFloat16: call.dtype = SeqDType::kBFloat16; break;
    default: throw std::invalid_argument("coupled_scan: the CUDA kernels read float32, float16 or bfloat16");
  }
  call.device = c.device;
  call.stream = reinterpret_cast<void*>(c.stream);
  call.time_segments = c.time_segments;
  return call;
}

void raise_on_cuda(Status st, const char* what) {
  if (st == Status::kOk) return;
  std::string msg = std::string("coupled_scan ") + what + " failed: " + status_string(st);
  const std::string detail = cuda_error_text();
  if (!detail.empty()) msg += " (" + detail + ")";
  throw std::runtime_error(msg);
}

// The CUDA kernels write contiguous results only.
void reject_result_rows(const ScanCall& c) {
  for (const Seq* rows : {&c.out_rows, &c.du_rows, &c.ddelta_rows, &c.dB_rows, &c.dC_rows, &c.dz_rows})
    if (rows->data)
      throw std::invalid_argument("coupled_scan: the CUDA kernels write contiguous results; leave the *_rows "
                                  "layouts of ScanCall unset");
}

void forward_cuda_py(const ScanCall& c) {
  reject_result_rows(c);
  raise_on_cuda(without_gil(&forward_cuda, forward_args<float>(c), cuda_call(c), ptr<float>(c.workspace)),
                "forward (CUDA)");
}

void backward_cuda_py(const ScanCall& c) {
  reject_result_rows(c);
  raise_on_cuda(without_gil(&backward_cuda, backward_args<float>(c), cuda_call(c), ptr<float>(c.workspace)),
                "backward (CUDA)");
}

// A backward without checkpoints recomputes them into the workspace, which then holds them too.
int64_t cuda_workspace_py(const ScanCall& c, bool backward) {
  const int64_t n = cuda_workspace(sizes(c), c.coupling, backward, cuda_call(c), backward && c.checkpoints == 0);
  if (n < 0) throw std::runtime_error("coupled_scan: cannot query the CUDA device for the workspace size");
  return n;
}
#endif

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "Fused coupled selective scan kernels (torch-free; tensors pass as pointers and strides)";

  py::enum_<DType>(m, "DType")
      .value("float32", DType::kFloat32)
      .value("float64", DType::kFloat64)
      .value("float16", DType::kFloat16)
      .value("bfloat16", DType::kBFloat16);
  py::enum_<CouplingKind>(m, "CouplingKind")
      .value("rank_one", CouplingKind::kRankOne)
      .value("none", CouplingKind::kNone)
      .value("general", CouplingKind::kGeneral);

  py::class_<Seq>(m, "Seq")
      .def(py::init<>())
      .def(py::init([](std::uintptr_t data, int64_t sb, int64_t sm, int64_t sr, int64_t st) {
             return Seq{data, sb, sm, sr, st};
           }),
           py::arg("data"), py::arg("stride_batch"), py::arg("stride_modality"), py::arg("stride_row"),
           py::arg("stride_time") = 1)
      .def_readwrite("data", &Seq::data)
      .def_readwrite("stride_batch", &Seq::stride_batch)
      .def_readwrite("stride_modality", &Seq::stride_modality)
      .def_readwrite("stride_row", &Seq::stride_row)
      .def_readwrite("stride_time", &Seq::stride_time);

  py::class_<ScanCall> call(m, "ScanCall");
  call.def(py::init<>());
#define CS_FIELD(name) call.def_readwrite(#name, &ScanCall::name)
  CS_FIELD(batch); CS_FIELD(modalities); CS_FIELD(channels); CS_FIELD(state); CS_FIELD(length);
  CS_FIELD(dtype);
  CS_FIELD(u); CS_FIELD(delta); CS_FIELD(B); CS_FIELD(C); CS_FIELD(z); CS_FIELD(dout);
  CS_FIELD(A); CS_FIELD(D); CS_FIELD(delta_bias); CS_FIELD(W); CS_FIELD(initial_state); CS_FIELD(lengths);
  CS_FIELD(out); CS_FIELD(last_state); CS_FIELD(checkpoints); CS_FIELD(dlast_state);
  CS_FIELD(du); CS_FIELD(ddelta); CS_FIELD(dA); CS_FIELD(dB); CS_FIELD(dC); CS_FIELD(dD); CS_FIELD(dz);
  CS_FIELD(ddelta_bias); CS_FIELD(dW); CS_FIELD(dinitial_state);
  CS_FIELD(out_rows); CS_FIELD(du_rows); CS_FIELD(ddelta_rows); CS_FIELD(dB_rows); CS_FIELD(dC_rows); CS_FIELD(dz_rows);
  CS_FIELD(delta_softplus); CS_FIELD(coupling); CS_FIELD(alpha); CS_FIELD(num_threads);
  CS_FIELD(device); CS_FIELD(stream); CS_FIELD(time_segments); CS_FIELD(workspace);
#undef CS_FIELD

  py::class_<ConvCall> conv(m, "ConvCall");
  conv.def(py::init<>());
#define CS_CONV_FIELD(name) conv.def_readwrite(#name, &ConvCall::name)
  CS_CONV_FIELD(channels); CS_CONV_FIELD(rows); CS_CONV_FIELD(length); CS_CONV_FIELD(width); CS_CONV_FIELD(dtype);
  CS_CONV_FIELD(x); CS_CONV_FIELD(weight); CS_CONV_FIELD(bias); CS_CONV_FIELD(y); CS_CONV_FIELD(dy);
  CS_CONV_FIELD(dx); CS_CONV_FIELD(dweight); CS_CONV_FIELD(dbias); CS_CONV_FIELD(num_threads);
  CS_CONV_FIELD(step_major_groups);
#undef CS_CONV_FIELD
  m.def("conv_forward_cpu", &conv_forward_cpu_py);
  m.def("conv_backward_cpu", &conv_backward_cpu_py);
  m.attr("max_conv_width") = kMaxConvWidth;

  m.def("forward_cpu", &forward_cpu_py);
  m.def("backward_cpu", &backward_cpu_py);
  m.def("num_checkpoints", &num_checkpoints, py::arg("kind"), py::arg("length"), py::arg("on_cuda"));
  m.def("checkpoint_width", &checkpoint_width, py::arg("kind"), py::arg("modalities"), py::arg("state"));
  m.def("cpu_isa", &cpu_isa);
  m.attr("max_modalities") = kMaxModalities;
  m.attr("max_state") = kMaxState;
#ifdef CS_WITH_CUDA
  m.attr("has_cuda") = true;
  m.def("forward_cuda", &forward_cuda_py);
  m.def("backward_cuda", &backward_cuda_py);
  m.def("cuda_workspace", &cuda_workspace_py, py::arg("call"), py::arg("backward"));
  m.def("cuda_device_count", &cuda_device_count);
  m.def("cuda_exp_floor_ms", &cuda_exp_floor_ms);
  m.def("cuda_error_text", []() { return std::string(cuda_error_text()); });
  m.attr("cuda_runtime_version") = cuda_runtime_version();
#else
  m.attr("has_cuda") = false;
#endif
}
