// Times the CPU library's forward and backward scan directly through its C++ API (no Python, no
// PyTorch), so that two builds of the library can be compared run against run
// (tools/kernel_ab.sh). Prints one JSON object per run:
//   scan_kernel_bench [mean|sum|none|general] [paper|long|Bt,M,D,N,L] [repeats] [threads] [contiguous|model|steps]
// Inputs are random, as in a model: dt = softplus(delta) in about [0.02, 0.3], A = -(1..N),
// the gate z, D and delta_bias present; the backward gets a random dout and its checkpoints from
// the timed forward. Times are the minimum over the repeats after one warm-up call, as wall time
// (fwd_ms, bwd_ms) and as the process's CPU time (fwd_cpu_ms, bwd_cpu_ms: with one thread, the time
// the kernel ran, which other work on a shared machine inflates less than it does the wall time).
// Layout "model": every sequence tensor, inputs and results, is stored as (M, rows, Bt, L) and
// passed as strided rows, as a Coupled Mamba layer passes them (its branch's (M, channels, batch,
// L) layout): a task's rows then lie Bt * L apart instead of L. Layout "steps": every sequence
// tensor is stored as (M, Bt, L, R) and passed step-major (SeqTensor), as a layer that keeps its
// activations as (M, batch * L, channels) passes them.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "coupled_scan/coupled_scan.h"

using namespace coupled_scan;

namespace {

struct Shape {
  int64_t Bt, M, D, N, L;
};

bool parse_shape(const char* text, Shape* s) {
  if (!std::strcmp(text, "paper")) *s = {32, 3, 256, 64, 50};
  else if (!std::strcmp(text, "long")) *s = {2, 3, 256, 16, 4096};
  else if (std::sscanf(text, "%ld,%ld,%ld,%ld,%ld", &s->Bt, &s->M, &s->D, &s->N, &s->L) != 5) return false;
  return s->Bt > 0 && s->M > 0 && s->M <= kMaxModalities && s->D > 0 && s->N > 0 && s->N <= kMaxState && s->L > 0;
}

// Checkpoints for L steps through whichever num_chunks the library's header declares:
// tools/kernel_ab.sh also builds this file against older revisions, whose chunk count took only L.
template <typename K, typename I>
auto chunks_of(K kind, I L, int) -> decltype(num_chunks(kind, L)) {
  return num_chunks(kind, L);
}
template <typename K, typename I>
auto chunks_of(K, I L, long) -> decltype(num_chunks(L)) {
  return num_chunks(L);
}

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

double cpu_ms() {  // CPU time of the process (every thread)
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return 1e3 * ts.tv_sec + 1e-6 * ts.tv_nsec;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string coupling = argc > 1 ? argv[1] : "mean";
  Shape sh{};
  if (!parse_shape(argc > 2 ? argv[2] : "paper", &sh)) {
    std::fprintf(stderr, "size: expected paper, long or Bt,M,D,N,L within the library's limits; got %s\n", argv[2]);
    return 2;
  }
  const int repeats = argc > 3 ? std::atoi(argv[3]) : 5;
  const int threads = argc > 4 ? std::atoi(argv[4]) : 1;
  if (repeats < 1 || threads < 1) {
    std::fprintf(stderr, "repeats and threads must be at least 1\n");
    return 2;
  }
  const std::string layout = argc > 5 ? argv[5] : "contiguous";
  if (layout != "contiguous" && layout != "model" && layout != "steps") {
    std::fprintf(stderr, "layout: expected contiguous, model or steps; got %s\n", layout.c_str());
    return 2;
  }
  const bool model_layout = layout == "model", steps_layout = layout == "steps";
  const int64_t Bt = sh.Bt, M = sh.M, D = sh.D, N = sh.N, L = sh.L;

  std::mt19937 gen(0);
  std::normal_distribution<float> normal;
  std::uniform_real_distribution<float> pre_softplus(-4.f, -1.f);
  auto random = [&](size_t n, bool delta) {
    std::vector<float> v(n);
    for (float& x : v) x = delta ? pre_softplus(gen) : normal(gen);
    return v;
  };
  const size_t seq = Bt * M * D * L, bc = Bt * M * N * L;
  const std::vector<float> u = random(seq, false), delta = random(seq, true), z = random(seq, false);
  const std::vector<float> B = random(bc, false), C = random(bc, false), dout = random(seq, false);
  const std::vector<float> skip = random(M * D, false), bias = random(M * D, false);
  std::vector<float> A(M * D * N), W(M * M);
  for (int64_t i = 0; i < M * D * N; ++i) A[i] = -float(i % N + 1);
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < M; ++j) W[i * M + j] = i == j ? 0.6f : 0.4f / float(M > 1 ? M - 1 : 1);

  // (batch, modality, row) strides of a (Bt, M, R, L) tensor, or of an (M, R, Bt, L) one in the model layout,
  // or (batch, modality, row, time) strides of an (M, Bt, L, R) one in the steps layout.
  auto strided = [&](auto* data, int64_t R) {
    typedef std::remove_const_t<std::remove_pointer_t<decltype(data)>> T;
    typedef std::conditional_t<std::is_const_v<std::remove_pointer_t<decltype(data)>>, const T, T> E;
    if (steps_layout) return SeqTensor<E>{data, L * R, Bt * L * R, 1, R};
    return model_layout ? SeqTensor<E>{data, L, R * Bt * L, Bt * L} : SeqTensor<E>{data, M * R * L, R * L, L};
  };
  auto rows = [&](const std::vector<float>& v, int64_t R) { return strided(v.data(), R); };
  ForwardArgs<float> f;
  f.size = {Bt, M, D, N, L};
  f.u = rows(u, D);
  f.delta = rows(delta, D);
  f.A = A.data();
  f.B = rows(B, N);
  f.C = rows(C, N);
  f.D = skip.data();
  f.z = rows(z, D);
  f.delta_bias = bias.data();
  f.delta_softplus = true;
  f.num_threads = threads;
  if (coupling == "mean" || coupling == "sum") {
    f.coupling = CouplingKind::kRankOne;
    f.alpha = coupling == "mean" ? 1.f / float(M) : 1.f;
  } else if (coupling == "none") {
    f.coupling = CouplingKind::kNone;
  } else if (coupling == "general") {
    f.coupling = CouplingKind::kGeneral;
    f.W = W.data();
  } else {
    std::fprintf(stderr, "coupling: expected mean, sum, none or general; got %s\n", coupling.c_str());
    return 2;
  }
  std::vector<float> out(seq), checkpoints(Bt * D * chunks_of(f.coupling, L, 0) * checkpoint_width(f.coupling, M, N));
  f.out = out.data();
  if (model_layout || steps_layout) f.out_rows = strided(out.data(), D);
  f.checkpoints = checkpoints.data();

  std::vector<float> du(seq), ddelta(seq), dA(M * D * N), dB(bc), dC(bc), dD(M * D), dz(seq), dbias(M * D), dW(M * M);
  BackwardArgs<float> b;
  b.fwd = f;
  b.checkpoints = checkpoints.data();
  b.dout = rows(dout, D);
  b.du = du.data();
  b.ddelta = ddelta.data();
  b.dA = dA.data();
  b.dB = dB.data();
  b.dC = dC.data();
  b.dD = dD.data();
  b.dz = dz.data();
  b.ddelta_bias = dbias.data();
  if (f.coupling == CouplingKind::kGeneral) b.dW = dW.data();
  if (model_layout || steps_layout) {
    b.du_rows = strided(du.data(), D);
    b.ddelta_rows = strided(ddelta.data(), D);
    b.dz_rows = strided(dz.data(), D);
    b.dB_rows = strided(dB.data(), N);
    b.dC_rows = strided(dC.data(), N);
  }

  double fwd_ms = 1e300, bwd_ms = 1e300, fwd_cpu_ms = 1e300, bwd_cpu_ms = 1e300;
  for (int r = 0; r <= repeats; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    double c0 = cpu_ms();
    Status st = forward_cpu(f);
    const double tf = ms_since(t0), cf = cpu_ms() - c0;
    if (st != Status::kOk) {
      std::fprintf(stderr, "forward_cpu: %s\n", status_string(st));
      return 1;
    }
    t0 = std::chrono::steady_clock::now();
    c0 = cpu_ms();
    st = backward_cpu(b);
    const double tb = ms_since(t0), cb = cpu_ms() - c0;
    if (st != Status::kOk) {
      std::fprintf(stderr, "backward_cpu: %s\n", status_string(st));
      return 1;
    }
    if (r > 0) {  // the first call is a warm-up
      fwd_ms = std::min(fwd_ms, tf);
      bwd_ms = std::min(bwd_ms, tb);
      fwd_cpu_ms = std::min(fwd_cpu_ms, cf);
      bwd_cpu_ms = std::min(bwd_cpu_ms, cb);
    }
  }
  // A checksum of the results, so that two builds can be seen to compute the same thing.
  double checksum = 0;
  for (float x : out) checksum += x;
  for (float x : ddelta) checksum += x;
  for (float x : dA) checksum += x;
  std::printf("{\"coupling\": \"%s\", \"size\": [%ld, %ld, %ld, %ld, %ld], \"threads\": %d, \"layout\": \"%s\", \"isa\": \"%s\", "
              "\"fwd_ms\": %.3f, \"bwd_ms\": %.3f, \"fwd_cpu_ms\": %.3f, \"bwd_cpu_ms\": %.3f, \"checksum\": %.9g}\n",
              coupling.c_str(), Bt, M, D, N, L, threads, layout.c_str(), cpu_isa(), fwd_ms, bwd_ms, fwd_cpu_ms, bwd_cpu_ms, checksum);
  return 0;
}
