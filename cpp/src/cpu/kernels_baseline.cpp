// CPU task kernels, baseline build (no extra flags: runs on every CPU of the target).
#define CS_ISA baseline
#define CS_VEC_BYTES 16
#define CS_TABLE_NAME kBaselineKernels
#include "kernel_instances.inc"
