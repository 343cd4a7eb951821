#ifndef MOCOD_CDNNL_SHIM_H
#define MOCOD_CDNNL_SHIM_H
// oneDNN 2.6 C API (Debian libdnnl-dev) and the two libgomp calls we need.
// omp.h lives in GCC's private include folder, which Swift's clang does not search.
#include <oneapi/dnnl/dnnl.h>
int omp_get_max_threads(void);
void omp_set_num_threads(int n);

#if defined(__linux__) && defined(__x86_64__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

/// Asks Linux for this process's AMX tile-data state (arch_prctl ARCH_REQ_XCOMP_PERM with
/// XFEATURE_XTILEDATA), which a process must hold before it runs AMX instructions (kernel 5.16+),
/// then reads the permitted set back. 1 when tile data is permitted, 0 otherwise (no AMX, an
/// older kernel, or another architecture). Idempotent.
static inline int mocod_request_amx_tile_data(void) {
#if defined(__linux__) && defined(__x86_64__)
    unsigned long mask = 0;
    (void)syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */);
    if (syscall(SYS_arch_prctl, 0x1022 /* ARCH_GET_XCOMP_PERM */, &mask) != 0) return 0;
    return (mask & (1UL << 18)) ? 1 : 0;
#else
    return 0;
#endif
}
#endif
