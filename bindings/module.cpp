// pybind11 module `coupled_mamba._C`: a thin, torch-free bridge. Python passes each tensor as a
// data pointer (and, for sequence tensors, its batch / modality / row strides) in a dict; shape,
// dtype and device checks happen in python/coupled_mamba/scan.py before anything reaches here.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "coupled_scan/coupled_scan.h"
#ifdef CS_WITH_CUDA
#include "coupled_scan/coupled_scan_cuda.h"
#endif

namespace py = pybind11;
using namespace coupled_scan;

namespace {

template <typename T>
T* ptr(const py::dict& d, const char* key) {
  if (!d.contains(key) || d[key].is_none()) return nullptr;
  return reinterpret_cast<T*>(d[key].cast<std::uintptr_t>());
}

template <typename T>
SeqTensor<const T> seq(const py::dict& d, const char* key) {
  if (!d.contains(key) || d[key].is_none()) return {};
  const py::tuple t = d[key].cast<py::tuple>();
  if (t.size() != 4) throw std::invalid_argument(std::string(key) + ": expected (pointer, 3 strides)");
  return {reinterpret_cast<const T*>(t[0].cast<std::uintptr_t>()), t[1].cast<int64_t>(), t[2].cast<int64_t>(),
          t[3].cast<int64_t>()};
}

template <typename T>
ForwardArgs<T> forward_args(const py::dict& d) {
  ForwardArgs<T> a;
  const py::tuple s = d["sizes"].cast<py::tuple>();
  a.size = {s[0].cast<int64_t>(), s[1].cast<int64_t>(), s[2].cast<int64_t>(), s[3].cast<int64_t>(),
            s[4].cast<int64_t>()};
  a.u = seq<T>(d, "u");
  a.delta = seq<T>(d, "delta");
  a.A = ptr<const T>(d, "A");
  a.B = seq<T>(d, "B");
  a.C = seq<T>(d, "C");
  a.D = ptr<const T>(d, "D");
  a.z = seq<T>(d, "z");
  a.delta_bias = ptr<const T>(d, "delta_bias");
  a.delta_softplus = d["delta_softplus"].cast<bool>();
  a.coupling = static_cast<CouplingKind>(d["coupling"].cast<int>());
  a.alpha = static_cast<T>(d["alpha"].cast<double>());
  a.W = ptr<const T>(d, "W");
  a.initial_state = ptr<const T>(d, "initial_state");
  a.out = ptr<T>(d, "out");
  a.last_state = ptr<T>(d, "last_state");
  a.checkpoints = ptr<T>(d, "checkpoints");
  a.num_threads = d["num_threads"].cast<int>();
  return a;
}

void raise_on(Status st, const char* what) {
  if (st != Status::kOk)
    throw std::runtime_error(std::string("coupled_scan ") + what + " failed: " + status_string(st));
}

template <typename T>
void forward_cpu_py(const py::dict& d) {
  const ForwardArgs<T> a = forward_args<T>(d);
  Status st;
  {
    py::gil_scoped_release release;
    st = forward_cpu(a);
  }
  raise_on(st, "forward (CPU)");
}

template <typename T>
BackwardArgs<T> backward_args(const py::dict& d) {
  BackwardArgs<T> g;
  g.fwd = forward_args<T>(d);
  g.checkpoints = ptr<const T>(d, "checkpoints");
  g.dout = seq<T>(d, "dout");
  g.dlast_state = ptr<const T>(d, "dlast_state");
  g.du = ptr<T>(d, "du");
  g.ddelta = ptr<T>(d, "ddelta");
  g.dA = ptr<T>(d, "dA");
  g.dB = ptr<T>(d, "dB");
  g.dC = ptr<T>(d, "dC");
  g.dD = ptr<T>(d, "dD");
  g.dz = ptr<T>(d, "dz");
  g.ddelta_bias = ptr<T>(d, "ddelta_bias");
  g.dW = ptr<T>(d, "dW");
  g.dinitial_state = ptr<T>(d, "dinitial_state");
  return g;
}

template <typename T>
void backward_cpu_py(const py::dict& d) {
  const BackwardArgs<T> g = backward_args<T>(d);
  Status st;
  {
    py::gil_scoped_release release;
    st = backward_cpu(g);
  }
  raise_on(st, "backward (CPU)");
}

void by_dtype(const std::string& dtype, const py::dict& d, void (*f32)(const py::dict&),
              void (*f64)(const py::dict&)) {
  if (dtype == "float32") return f32(d);
  if (dtype == "float64") return f64(d);
  throw std::invalid_argument("coupled_scan: compute dtype must be float32 or float64, got " + dtype);
}

#ifdef CS_WITH_CUDA
SeqDType seq_dtype(const std::string& dtype) {
  if (dtype == "float32") return SeqDType::kFloat32;
  if (dtype == "float16") return SeqDType::kFloat16;
  if (dtype == "bfloat16") return SeqDType::kBFloat16;
  throw std::invalid_argument("coupled_scan: CUDA sequence dtype must be float32, float16 or bfloat16, got " + dtype);
}

void raise_on_cuda(Status st, const char* what) {
  if (st == Status::kOk) return;
  std::string msg = std::string("coupled_scan ") + what + " failed: " + status_string(st);
  const std::string detail = cuda_error_text();
  if (!detail.empty()) msg += " (" + detail + ")";
  throw std::runtime_error(msg);
}

// d["device"]: the CUDA device index; d["stream"]: the cudaStream_t as an integer;
// d["time_segments"]: 0 (automatic) or a count; d["workspace"]: cuda_workspace(...) floats.
CudaCall cuda_call(const std::string& dtype, const py::dict& d) {
  CudaCall c;
  c.dtype = seq_dtype(dtype);
  c.device = d["device"].cast<int>();
  c.stream = reinterpret_cast<void*>(d["stream"].cast<std::uintptr_t>());
  c.time_segments = d.contains("time_segments") ? d["time_segments"].cast<int64_t>() : 0;
  return c;
}

// Runs forward_cuda or backward_cuda (`entry`) on arguments `args` without the GIL.
template <typename Args>
void call_cuda(Status (*entry)(const Args&, const CudaCall&, float*), const Args& args, const std::string& dtype,
               const py::dict& d, const char* what) {
  const CudaCall call = cuda_call(dtype, d);
  float* work = ptr<float>(d, "workspace");
  Status st;
  {
    py::gil_scoped_release release;
    st = entry(args, call, work);
  }
  raise_on_cuda(st, what);
}

void forward_cuda_py(const std::string& dtype, const py::dict& d) {
  call_cuda(&forward_cuda, forward_args<float>(d), dtype, d, "forward (CUDA)");
}

void backward_cuda_py(const std::string& dtype, const py::dict& d) {
  call_cuda(&backward_cuda, backward_args<float>(d), dtype, d, "backward (CUDA)");
}

int64_t cuda_workspace_py(const std::string& dtype, const py::dict& d, bool backward) {
  const py::tuple s = d["sizes"].cast<py::tuple>();
  const Sizes sizes{s[0].cast<int64_t>(), s[1].cast<int64_t>(), s[2].cast<int64_t>(), s[3].cast<int64_t>(),
                    s[4].cast<int64_t>()};
  const int64_t n = cuda_workspace(sizes, static_cast<CouplingKind>(d["coupling"].cast<int>()), backward,
                                   cuda_call(dtype, d));
  if (n < 0) throw std::runtime_error("coupled_scan: cannot query the CUDA device for the workspace size");
  return n;
}
#endif

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "Fused coupled selective scan kernels (torch-free; tensors pass as pointers and strides)";
  m.def("forward_cpu", [](const std::string& dtype, const py::dict& d) {
    by_dtype(dtype, d, &forward_cpu_py<float>, &forward_cpu_py<double>);
  });
  m.def("backward_cpu", [](const std::string& dtype, const py::dict& d) {
    by_dtype(dtype, d, &backward_cpu_py<float>, &backward_cpu_py<double>);
  });
  m.def("num_chunks", &num_chunks);
  m.def("checkpoint_width", [](int kind, int64_t M, int64_t N) {
    return checkpoint_width(static_cast<CouplingKind>(kind), M, N);
  });
  m.def("cpu_isa", &cpu_isa);
#ifdef CS_WITH_CUDA
  m.attr("has_cuda") = true;
  m.def("forward_cuda", &forward_cuda_py);
  m.def("backward_cuda", &backward_cuda_py);
  m.def("cuda_workspace", &cuda_workspace_py);
  m.def("cuda_device_count", &cuda_device_count);
  m.def("cuda_exp_floor_ms", &cuda_exp_floor_ms);
  m.def("cuda_error_text", []() { return std::string(cuda_error_text()); });
  m.attr("cuda_runtime_version") = cuda_runtime_version();
  m.def("cuda_chunk", [](int kind) { return cuda_chunk(static_cast<CouplingKind>(kind)); });
#else
  m.attr("has_cuda") = false;
#endif
  m.attr("max_modalities") = kMaxModalities;
  m.attr("max_state") = kMaxState;
  m.attr("chunk") = kChunk;
}
