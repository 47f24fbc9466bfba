// A minimal task runner: `num_threads` workers pull task indices from a shared counter. Each
// worker owns a scratch buffer for its whole lifetime so kernels never allocate per task.
// Results must not depend on which worker ran a task (kernels write per-task slots only).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <thread>
#include <vector>

namespace coupled_scan {
namespace cpu {

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
