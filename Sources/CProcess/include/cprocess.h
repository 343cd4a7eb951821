#ifndef MOCOD_CPROCESS_H
#define MOCOD_CPROCESS_H
/// Linux process calls Swift cannot import directly (prctl is variadic; sched_setaffinity needs _GNU_SOURCE).

/// Asks the kernel to send `sig` to this process when its parent dies; 0 on success, else errno.
int mocod_set_parent_death_signal(int sig);

/// Pins this process (and threads it starts later) to `count` cores; 0 on success, else errno.
int mocod_pin_to_cores(const int *cores, int count);

/// The cores this process may run on, into `out` (at most `capacity`); the count, or -errno.
int mocod_allowed_cores(int *out, int capacity);
#endif
