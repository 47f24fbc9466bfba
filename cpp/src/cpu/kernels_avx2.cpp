// CPU task kernels, avx2 build (compiled with -mavx2 -mfma (see CMakeLists.txt)).
#define CS_ISA avx2
#define CS_VEC_BYTES 32
#define CS_TABLE_NAME kAvx2Kernels
#include "kernel_instances.inc"
