#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include "cprocess.h"

int mocod_set_parent_death_signal(int sig) {
    return prctl(PR_SET_PDEATHSIG, (unsigned long)sig, 0, 0, 0) == 0 ? 0 : errno;
}

int mocod_pin_to_cores(const int *cores, int count) {
    cpu_set_t set;
    CPU_ZERO(&set);
    for (int i = 0; i < count; i++) {
        if (cores[i] < 0 || cores[i] >= CPU_SETSIZE) return EINVAL;
        CPU_SET(cores[i], &set);
    }
    return sched_setaffinity(0, sizeof set, &set) == 0 ? 0 : errno;
}

int mocod_allowed_cores(int *out, int capacity) {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) != 0) return -errno;
    int n = 0;
    for (int c = 0; c < CPU_SETSIZE && n < capacity; c++) if (CPU_ISSET(c, &set)) out[n++] = c;
    return n;
}
