// CPU entry points: argument checks, instruction-set dispatch, threading, the L = 0 case and
// the fixed-order reductions of the backward's per-task partial sums.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "check_args.h"
#include "coupled_scan/causal_conv.h"
#include "coupled_scan/coupled_scan.h"
#include "cpu/backward_partials.h"
#include "cpu/chunk_inputs.h"
#include "cpu/kernel_table.h"
#include "cpu/parallel.h"
#include "cpu/workspace.h"

namespace coupled_scan {

const char* status_string(Status s) {
  switch (s) {
    case Status::kOk: return "ok";
    case Status::kInvalidSize: return "a size is out of its supported range";
    case Status::kInvalidArgument: return "an argument has an unsupported value (the coupling kind, or a sequence tensor's layout)";
    case Status::kNullPointer: return "a required tensor pointer is null";
    case Status::kOutOfMemory: return "out of memory while allocating a workspace";
    case Status::kInternalError: return "internal error";
    case Status::kNotCompiled: return "this back end is not compiled into the library";
    case Status::kCudaError: return "a CUDA runtime call failed";
  }
  return "unknown status";
}

namespace cpu {
namespace {

bool cpu_has(const char* isa) {
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  if (std::strcmp(isa, "avx2") == 0) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (std::strcmp(isa, "avx512") == 0)
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("fma");
#endif
  (void)isa;
  return false;
}

// The widest kernel set the CPU supports; COUPLED_MAMBA_CPU_ISA=baseline|avx2|avx512 caps it
// (tests use this to check every set against the reference).
const KernelTable& select_kernels() {
  static const KernelTable* chosen = [] {
    const char* cap = std::getenv("COUPLED_MAMBA_CPU_ISA");
    std::string want = cap ? cap : "avx512";
    if (want != "baseline" && want != "avx2" && want != "avx512") {
      std::fprintf(stderr, "coupled_scan: COUPLED_MAMBA_CPU_ISA=%s is not baseline, avx2 or avx512; ignoring it\n",
                   want.c_str());
      want = "avx512";
    }
    const KernelTable* t = &kBaselineKernels;
#if defined(CS_HAVE_AVX2)
    if ((want == "avx2" || want == "avx512") && cpu_has("avx2")) t = &kAvx2Kernels;
#endif
#if defined(CS_HAVE_AVX512)
    if (want == "avx512" && cpu_has("avx512")) t = &kAvx512Kernels;
#endif
    return t;
  }();
  return *chosen;
}

template <typename T>
const TaskKernels<T>& kernels_for(const KernelTable& t);
template <>
const TaskKernels<float>& kernels_for<float>(const KernelTable& t) { return t.f32; }
template <>
const TaskKernels<double>& kernels_for<double>(const KernelTable& t) { return t.f64; }

template <typename T>
Status check_forward(const ForwardArgs<T>& a) {
  if (a.num_threads < 1) return Status::kInvalidSize;
  Status st = check_forward_args(a);
  if (st != Status::kOk) return st;
  if ((st = check_input_layouts(a)) != Status::kOk) return st;
  return check_lengths(a.lengths, a.size.batch, a.size.length);
}

struct StatusError {
  Status status;
};

// Runs fn and turns exceptions into status codes: nothing may escape into the caller.
template <typename Fn>
Status guarded(const Fn& fn) {
  try {
    fn();
  } catch (const StatusError& e) {
    return e.status;
  } catch (const std::bad_alloc&) {
    return Status::kOutOfMemory;
  } catch (...) {
    return Status::kInternalError;
  }
  return Status::kOk;
}

template <typename T>
void fill(T* p, int64_t n, T v) {
  if (p)
    for (int64_t i = 0; i < n; ++i) p[i] = v;
}

template <typename T>
Status run_forward(const ForwardArgs<T>& given) {
  ForwardArgs<T> a = given;  // the kernels write `out` through out_rows only
  a.out_rows = result_rows(given.out_rows, given.out, given.size, given.size.channels);
  const Sizes& s = a.size;
  const int64_t state_elems = s.batch * s.modalities * s.channels * s.state;
  if (s.length == 0) {  // h_{L-1} is the initial state
    if (a.last_state) {
      if (a.initial_state) std::memcpy(a.last_state, a.initial_state, sizeof(T) * state_elems);
      else fill(a.last_state, state_elems, T(0));
    }
    return Status::kOk;
  }
  const TaskKernels<T>& k = kernels_for<T>(select_kernels());
  return guarded([&] {
    run_tasks<T>(num_tasks(s, a.coupling), a.num_threads, k.forward_scratch(s, a.coupling),
                 [&](int64_t task, T* scratch) { k.forward(a, task, scratch); });
  });
}

// Seq gradients of an empty call (no step, sample or channel): every element of `rows` zero, in
// either layout.
template <typename T>
void fill_rows(const SeqTensor<T>& rows, const Sizes& s, int64_t R) {
  if (!rows.data) return;
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t m = 0; m < s.modalities; ++m)
      for (int64_t r = 0; r < R; ++r)
        for (int64_t t = 0; t < s.length; ++t) *rows.at(b, m, r, t) = T(0);
}

template <typename T>
Status run_backward(const BackwardArgs<T>& given) {
  // Every sequence gradient goes through its *_rows layout: the caller's strided one or the
  // contiguous tensor.
  BackwardArgs<T> a = given;
  const Sizes& sz = given.fwd.size;
  a.du_rows = result_rows(given.du_rows, given.du, sz, sz.channels);
  a.ddelta_rows = result_rows(given.ddelta_rows, given.ddelta, sz, sz.channels);
  a.dz_rows = result_rows(given.dz_rows, given.dz, sz, sz.channels);
  a.dB_rows = result_rows(given.dB_rows, given.dB, sz, sz.state);
  a.dC_rows = result_rows(given.dC_rows, given.dC, sz, sz.state);
  const ForwardArgs<T>& f = a.fwd;
  const Sizes& s = f.size;
  const int64_t M = s.modalities, D = s.channels, N = s.state, L = s.length;
  const int64_t bmd = s.batch * M * D;
  const bool general = f.coupling == CouplingKind::kGeneral;
  fill(a.dW, M * M, T(0));
  if (L == 0 || s.batch == 0 || D == 0) {  // every non-empty gradient is zero, or d last_state
    fill_rows(a.dB_rows, s, N);
    fill_rows(a.dC_rows, s, N);
    fill(a.dA, M * D * N, T(0));
    fill(a.dD, M * D, T(0));
    fill(a.ddelta_bias, M * D, T(0));
    if (a.dinitial_state) {
      if (a.dlast_state) std::memcpy(a.dinitial_state, a.dlast_state, sizeof(T) * bmd * N);
      else fill(a.dinitial_state, bmd * N, T(0));
    }
    return Status::kOk;
  }
  if (!a.dout.data || !a.du_rows.data || !a.ddelta_rows.data || !a.dA || !a.dB_rows.data || !a.dC_rows.data)
    return Status::kNullPointer;
  if (f.z.data && !a.dz_rows.data) return Status::kNullPointer;

  const TaskKernels<T>& k = kernels_for<T>(select_kernels());
  return guarded([&] {
    BackwardArgs<T> args = a;
    std::vector<T> checkpoints;
    if (!args.checkpoints) {  // not saved by the caller: recompute them with a forward pass
      checkpoints.resize(s.batch * D * num_chunks(f.coupling, L) * checkpoint_width(f.coupling, M, N));
      ForwardArgs<T> fa = f;
      fa.out = nullptr;
      fa.out_rows = SeqTensor<T>{};
      fa.last_state = nullptr;
      fa.checkpoints = checkpoints.data();
      const Status st = run_forward(fa);
      if (st != Status::kOk) throw StatusError{st};
      args.checkpoints = checkpoints.data();
    }
    const int64_t cb = channel_block(D), blocks = (D + cb - 1) / cb;
    const int64_t Np = padded_state(N);
    const int64_t sample_slots = blocks * M * L * Np;  // one sample's dB (or dC) partial sums
    // The tasks write every slot of dA and dW, so those need no zero fill; dD and d delta_bias are
    // accumulated into. Reused across calls (workspace.h): allocated per call they were faulted in
    // page by page.
    T* dA = thread_buffer<T>(BufferSlot::kPartialA, bmd * Np);
    T* dW = thread_buffer<T>(BufferSlot::kPartialW, general ? s.batch * blocks * M * M : 1);
    std::vector<T> dD(bmd), dbias(bmd);
    BackwardPartials<T> p{nullptr, nullptr, dA, dD.data(), dbias.data(), dW, blocks};
    const int64_t scratch = k.backward_scratch(s, f.coupling);
    const int64_t tasks = num_tasks(s, f.coupling), tasks_per_sample = tasks / s.batch;

    // With one thread, or at least 4 samples per thread, a worker runs all the tasks of one sample
    // in turn into partial sums of that sample alone (a few hundred kB, cache resident), and sums
    // them at once; otherwise every task of every sample runs in parallel into partial sums of the
    // whole batch (tens of MB at the model's sizes), summed afterwards. Both add the same numbers in
    // the same order: the results are the same bits either way. The choice depends on the threads
    // asked for and the batch only (not on the machine), so that tests can take either path.
    // dB, dC of each (sample, modality) are then summed over the channel blocks by
    // k.sum_state_partials (cpu/partial_sums.h), with L * Np elements of scratch.
    const int64_t parallel = std::min<int64_t>(f.num_threads, tasks);
    if (parallel <= 1 || s.batch >= 4 * parallel) {
      const int workers = task_workers(s.batch, f.num_threads);
      const int64_t per_worker = 2 * sample_slots + L * Np;
      T* own_sums = thread_buffer<T>(BufferSlot::kPartialB, workers * per_worker);
      run_worker_tasks<T>(s.batch, workers, scratch, [&](int64_t b, int worker, T* buf) {
        BackwardPartials<T> own = p;
        own.dB = own_sums + worker * per_worker;
        own.dC = own.dB + sample_slots;
        own.first_sample = b;
        for (int64_t task = b * tasks_per_sample; task < (b + 1) * tasks_per_sample; ++task)
          k.backward(args, own, task, buf);
        for (int64_t m = 0; m < M; ++m) k.sum_state_partials(args, b, m, blocks, own.dB, own.dC, own.dC + sample_slots);
      });
    } else {
      p.dB = thread_buffer<T>(BufferSlot::kPartialB, s.batch * sample_slots);
      p.dC = thread_buffer<T>(BufferSlot::kPartialC, s.batch * sample_slots);
      run_tasks<T>(tasks, f.num_threads, scratch, [&](int64_t task, T* buf) { k.backward(args, p, task, buf); });
      run_tasks<T>(s.batch * M, f.num_threads, L * Np, [&](int64_t bm, T* sums) {
        const int64_t b = bm / M;
        k.sum_state_partials(args, b, bm % M, blocks, p.dB + b * sample_slots, p.dC + b * sample_slots, sums);
      });
    }

    // Over the batch, in batch order, for the rest.
    run_tasks<T>(M * D, f.num_threads, 0, [&](int64_t md, T*) {
      T* oa = a.dA + md * N;
      T sd = T(0), sb = T(0);
      for (int64_t n = 0; n < N; ++n) oa[n] = T(0);
      for (int64_t b = 0; b < s.batch; ++b) {
        const T* pa = dA + (b * M * D + md) * Np;
        for (int64_t n = 0; n < N; ++n) oa[n] += pa[n];
        sd += dD[b * M * D + md];
        sb += dbias[b * M * D + md];
      }
      if (a.dD) a.dD[md] = sd;
      if (a.ddelta_bias) a.ddelta_bias[md] = sb;
    });
    if (general && a.dW)
      for (int64_t slot = 0; slot < s.batch * blocks; ++slot)
        for (int64_t i = 0; i < M * M; ++i) a.dW[i] += dW[slot * M * M + i];
  });
}

}  // namespace
}  // namespace cpu

template <typename T>
Status forward_cpu(const ForwardArgs<T>& args) {
  Status st = cpu::check_forward(args);
  if (st != Status::kOk) return st;
  if ((st = check_output_layout(args)) != Status::kOk) return st;
  if (args.size.batch == 0 || args.size.channels == 0) return Status::kOk;  // every output is empty
  return cpu::run_forward(args);
}

template <typename T>
Status backward_cpu(const BackwardArgs<T>& args) {
  Status st = cpu::check_forward(args.fwd);
  if (st != Status::kOk) return st;
  if ((st = check_gradient_layouts(args)) != Status::kOk) return st;
  return cpu::run_backward(args);
}

namespace cpu {
namespace {

template <typename T>
Status check_conv(const CausalConvArgs<T>& a) {
  if (a.channels < 0 || a.rows < 0 || a.length < 0 || a.num_threads < 1) return Status::kInvalidSize;
  if (a.width < 1 || a.width > kMaxConvWidth) return Status::kInvalidSize;
  if (a.step_major_groups < 0 || (a.step_major_groups > 0 && a.channels % a.step_major_groups != 0))
    return Status::kInvalidSize;
  if (a.channels * a.rows * a.length > 0 && (!a.x || !a.weight)) return Status::kNullPointer;
  return Status::kOk;
}

// The step-major conv's tasks: blocks of whole lines of a group's channels, as many lines as
// leave two tasks per worker (at most k.conv_step_max_lines). Each lane's arithmetic is the same
// whatever the blocks, so the results do not depend on the thread count.
struct ConvStepBlocks {
  int64_t per_group, channels_per_block, blocks_per_group;
};
template <typename T>
ConvStepBlocks conv_step_blocks(const CausalConvArgs<T>& a, const TaskKernels<T>& k) {
  const int64_t per_group = a.channels / a.step_major_groups;
  const int64_t lines = (per_group + k.conv_step_line - 1) / k.conv_step_line;
  const int64_t workers = task_workers(a.step_major_groups * lines, a.num_threads);
  const int64_t per_block = std::max<int64_t>(
      1, std::min<int64_t>(k.conv_step_max_lines, a.step_major_groups * lines / (2 * workers)));
  return {per_group, per_block * k.conv_step_line, (lines + per_block - 1) / per_block};
}

template <typename T, typename Kernel, typename Args>
void run_conv_steps(const Args& args, const CausalConvArgs<T>& a, const TaskKernels<T>& k, Kernel kernel) {
  const ConvStepBlocks b = conv_step_blocks(a, k);
  run_tasks<T>(a.step_major_groups * b.blocks_per_group, a.num_threads, 0, [&](int64_t task, T* scratch) {
                 const int64_t g = task / b.blocks_per_group, e = task % b.blocks_per_group * b.channels_per_block;
                 kernel(args, g, e, std::min(e + b.channels_per_block, b.per_group), scratch);
               });
}

}  // namespace
}  // namespace cpu

template <typename T>
Status causal_conv_silu_forward_cpu(const CausalConvArgs<T>& a) {
  Status st = cpu::check_conv(a);
  if (st != Status::kOk) return st;
  if (a.channels * a.rows * a.length == 0) return Status::kOk;
  if (!a.y) return Status::kNullPointer;
  const cpu::TaskKernels<T>& k = cpu::kernels_for<T>(cpu::select_kernels());
  return cpu::guarded([&] {
    if (a.step_major_groups > 0) return cpu::run_conv_steps(a, a, k, k.conv_steps_forward);
    cpu::run_tasks<T>(a.channels, a.num_threads, 0, [&](int64_t c, T* scratch) { k.conv_forward(a, c, scratch); });
  });
}

template <typename T>
Status causal_conv_silu_backward_cpu(const CausalConvBackwardArgs<T>& g) {
  const CausalConvArgs<T>& a = g.fwd;
  Status st = cpu::check_conv(a);
  if (st != Status::kOk) return st;
  if (a.channels > 0 && !g.dweight) return Status::kNullPointer;
  if (a.channels * a.rows * a.length == 0) {  // no step: the parameter gradients are zero
    cpu::fill(g.dweight, a.channels * a.width, T(0));
    cpu::fill(g.dbias, a.channels, T(0));
    return Status::kOk;
  }
  if (!g.dy || !g.dx) return Status::kNullPointer;
  const cpu::TaskKernels<T>& k = cpu::kernels_for<T>(cpu::select_kernels());
  return cpu::guarded([&] {
    if (a.step_major_groups > 0) return cpu::run_conv_steps(g, a, k, k.conv_steps_backward);
    cpu::run_tasks<T>(a.channels, a.num_threads, a.length,
                      [&](int64_t c, T* scratch) { k.conv_backward(g, c, scratch); });
  });
}

template Status causal_conv_silu_forward_cpu<float>(const CausalConvArgs<float>&);
template Status causal_conv_silu_forward_cpu<double>(const CausalConvArgs<double>&);
template Status causal_conv_silu_backward_cpu<float>(const CausalConvBackwardArgs<float>&);
template Status causal_conv_silu_backward_cpu<double>(const CausalConvBackwardArgs<double>&);

template Status forward_cpu<float>(const ForwardArgs<float>&);
template Status forward_cpu<double>(const ForwardArgs<double>&);
template Status backward_cpu<float>(const BackwardArgs<float>&);
template Status backward_cpu<double>(const BackwardArgs<double>&);

const char* cpu_isa() { return cpu::select_kernels().isa; }

}  // namespace coupled_scan
