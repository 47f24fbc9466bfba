// Buffers of the CPU entry points that outlive a call, one set per calling thread.
//
// The backward's per-task partial sums (dB, dC, dA, dW) are tens of MB at the model's sizes. Taken
// from malloc and freed on every call, that memory goes back to the operating system (glibc trims
// the top of its heap or unmaps large blocks) and the next call faults it in again, page by page:
// at the training benchmark's aligned size that was about 25,000 page faults per training step,
// several percent of the step. Kept per calling thread, the buffers are allocated once, grow when a
// call needs more, and are reused; a thread that ran a backward holds them until it exits. Per
// thread, so that calls from several threads never share one.
#pragma once

#include <cstddef>
#include <memory>

namespace coupled_scan {
namespace cpu {

// kPartialB holds the batch's dB partial sums, or on the per-sample path (scan_cpu.cpp) every
// worker's dB and dC sums of one sample; kPartialC is used on the batch-wide path only.
enum class BufferSlot { kPartialB, kPartialC, kPartialA, kPartialW, kCount };

// At least `elems` uninitialised elements, valid until this thread's next call for the same slot.
template <typename T>
T* thread_buffer(BufferSlot slot, size_t elems) {
  struct Buffer {
    std::unique_ptr<T[]> data;
    size_t size = 0;
  };
  thread_local Buffer buffers[static_cast<int>(BufferSlot::kCount)];
  Buffer& b = buffers[static_cast<int>(slot)];
  if (b.size < elems || !b.data) {
    b.data.reset();  // free the old one first: peak memory is the new size, not both
    b.size = 0;
    b.data.reset(new T[elems > 0 ? elems : 1]);
    b.size = elems;
  }
  return b.data.get();
}

}  // namespace cpu
}  // namespace coupled_scan
