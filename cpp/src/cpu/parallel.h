// A minimal task runner: `num_threads` workers pull task indices from a shared counter. Each
// worker owns a scratch buffer for the call so kernels never allocate per task.
// Results must not depend on which worker ran a task (kernels write per-task slots only).
//
// Built with OpenMP (CS_WITH_OPENMP, the default where CMake finds it), the workers are the
// OpenMP runtime's threads. Inside PyTorch that is PyTorch's own runtime (torch ships libgomp.so.1,
// the same SONAME, so the process loads one copy): the threads that just ran a torch op, and that
// spin-wait for the next one, take the tasks, instead of threads of ours competing with them for
// the cores. Without OpenMP, or inside a parallel region, the workers are std::threads started per call.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <thread>
#include <vector>

#if defined(CS_WITH_OPENMP) && defined(_OPENMP)
#include <omp.h>
#include <pthread.h>
#define CS_TASKS_ON_OPENMP 1
#endif

namespace coupled_scan {
namespace cpu {

#ifdef CS_TASKS_ON_OPENMP
// libgomp does not survive fork(): in a child of a process that had a thread team, the next
// parallel region waits for threads that were not copied (GCC bug 60035). A forked child takes
// the std::thread path instead; the flag is set by an atfork handler registered at load time.
inline std::atomic<bool> forked_child{false};
inline const bool fork_handler_registered = pthread_atfork(nullptr, nullptr, [] { forked_child = true; }) == 0;
inline bool openmp_usable() { return fork_handler_registered && !forked_child && !omp_in_parallel(); }
#endif

// How many workers run num_tasks tasks with num_threads threads allowed.
inline int task_workers(int64_t num_tasks, int num_threads) {
  const int64_t hw = std::max<int64_t>(1, std::thread::hardware_concurrency());
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({num_threads, num_tasks, hw})));
}

// body(task, worker, scratch) is called once for every task in [0, num_tasks) by at most `workers`
// workers (the caller's count, from task_workers); worker is the index, below `workers`, of the
// one running it, for per-worker buffers the caller sized with the same count.
template <typename T, typename Body>
void run_worker_tasks(int64_t num_tasks, int workers, size_t scratch_elems, const Body& body) {
  if (num_tasks <= 0) return;
  workers = std::max(1, workers);
  std::atomic<int64_t> next{0};
  std::exception_ptr error;
  std::atomic<bool> failed{false};
  auto work = [&](int worker) {
    try {
      std::vector<T> scratch(scratch_elems);
      for (int64_t task = next++; task < num_tasks && !failed; task = next++) body(task, worker, scratch.data());
    } catch (...) {
      if (!failed.exchange(true)) error = std::current_exception();
    }
  };
#ifdef CS_TASKS_ON_OPENMP
  if (workers > 1 && openmp_usable()) {
#pragma omp parallel num_threads(workers)
    work(omp_get_thread_num());  // the team may be smaller than asked for: the counter drains every task
    if (error) std::rethrow_exception(error);
    return;
  }
#endif
  std::vector<std::thread> threads;
  try {
    threads.reserve(workers - 1);
    for (int i = 1; i < workers; ++i) threads.emplace_back(work, i);
  } catch (const std::exception&) {
    // Could not start another thread (resource limits): the ones running, and this one, still
    // drain every task.
  }
  work(0);
  for (auto& t : threads) t.join();
  if (error) std::rethrow_exception(error);
}

// body(task, scratch) is called once for every task in [0, num_tasks).
template <typename T, typename Body>
void run_tasks(int64_t num_tasks, int num_threads, size_t scratch_elems, const Body& body) {
  // More workers than tasks or than hardware threads only costs thread starts.
  run_worker_tasks<T>(num_tasks, task_workers(num_tasks, num_threads), scratch_elems,
                      [&](int64_t task, int, T* scratch) { body(task, scratch); });
}

}  // namespace cpu
}  // namespace coupled_scan
