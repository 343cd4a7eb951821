#ifndef MOCOD_CDNNL_SHIM_H
#define MOCOD_CDNNL_SHIM_H
// oneDNN 2.6 C API (Debian libdnnl-dev) and the two libgomp calls we need.
// omp.h lives in GCC's private include folder, which Swift's clang does not search.
#include <oneapi/dnnl/dnnl.h>
int omp_get_max_threads(void);
void omp_set_num_threads(int n);
#endif
