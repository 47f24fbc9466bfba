// The backward's dB and dC of one (sample, modality) from the tasks' per-channel-block partial
// sums: added over the blocks in block order, then transposed from the kernels' [t][n] rows into
// the output's (n, t) rows. Per instruction set: written as scalar loops in the dispatcher (built
// for the baseline ISA, with the pointers possibly aliased) the sums and the transpose ran one
// element at a time (3% of a profile of the backward at the paper's size).
#pragma once

#include "backward_partials.h"
#include "simd_block.h"

#ifndef CS_ISA
#error "define CS_ISA (the instruction-set namespace) before including partial_sums.h"
#endif

namespace coupled_scan {
namespace cpu {
namespace CS_ISA {

// pB, pC: the sample's slots, (blocks, M, L, Np); sums: scratch of L Np (dB's sums, then dC's). Steps past the sample's
// length were not scanned: their partial rows are unwritten and their gradients are zero. Each
// element is 0 + block 0 + block 1 + ... as before (a vector accumulator starting at zero).
template <typename T>
void sum_state_partials(const BackwardArgs<T>& a, int64_t b, int64_t m, int64_t blocks, const T* pB, const T* pC,
                        T* sums) {
  typedef typename Simd<T>::V V;
  constexpr int64_t w = Simd<T>::width;
  const Sizes& s = a.fwd.size;
  const int64_t L = s.length, N = s.state, Np = padded_state(N);
  const int64_t valid = sample_length(a.fwd.lengths, b, L);
  const int64_t slots = s.modalities * L * Np;  // from one block's rows of m to the next block's
  const T* parts[2] = {pB + m * L * Np, pC + m * L * Np};
  const SeqTensor<T>* outs[2] = {&a.dB_rows, &a.dC_rows};
  for (int64_t which = 0; which < 2; ++which) {
    const T* part = parts[which];
    for (int64_t i = 0; i < valid * Np; i += w) {  // Np is a whole number of vectors
      V acc = V{};
      for (int64_t blk = 0; blk < blocks; ++blk) acc += load_block<V>(part + blk * slots + i);
      store_block(sums + i, acc);
    }
    const SeqTensor<T>& out = *outs[which];
    if (out.step_major()) {  // the output's steps are [t][n] rows already
      for (int64_t t = 0; t < L; ++t) {
        T* step = out.at(b, m, 0, t);
        for (int64_t n = 0; n < N; ++n) step[n] = t < valid ? sums[t * Np + n] : T(0);
      }
      continue;
    }
    transpose_rows(sums, Np, valid, N, out.row(b, m, 0), out.stride_row);
    for (int64_t n = 0; n < N; ++n) {
      T* row = out.row(b, m, n);
      for (int64_t t = valid; t < L; ++t) row[t] = T(0);
    }
  }
}

}  // namespace CS_ISA
}  // namespace cpu
}  // namespace coupled_scan
