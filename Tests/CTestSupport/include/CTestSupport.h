#ifndef CTESTSUPPORT_H
#define CTESTSUPPORT_H
#include <stdint.h>
/// Heap allocations (malloc, calloc, realloc, posix_memalign, aligned_alloc, memalign)
/// made by the calling thread since it started. Always 0 when the counter is not compiled in.
uint64_t ctest_thread_allocations(void);
/// Whether the counting interposer is active in this build (it is left out under sanitizers).
int ctest_allocation_counter_available(void);
#endif
