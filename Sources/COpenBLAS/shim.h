#ifndef MOCOD_COPENBLAS_SHIM_H
#define MOCOD_COPENBLAS_SHIM_H
// Debian's OpenBLAS (OpenMP variant: libopenblas-openmp-dev). cblas.h also declares
// openblas_get_corename and openblas_set_num_threads.
#include <x86_64-linux-gnu/openblas-openmp/cblas.h>
#endif
