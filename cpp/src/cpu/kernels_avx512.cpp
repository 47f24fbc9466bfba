// CPU task kernels, avx512 build (compiled with -mavx512f -mavx512vl -mavx512dq -mavx512bw -mfma).
#define CS_ISA avx512
#define CS_VEC_BYTES 64
#define CS_TABLE_NAME kAvx512Kernels
#include "kernel_instances.inc"
