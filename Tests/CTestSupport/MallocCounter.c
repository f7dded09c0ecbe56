// A per-thread count of heap allocations, for tests that assert "no allocation per connection".
//
// The test executable defines malloc and friends; symbols in the executable take precedence over
// glibc's, so every allocation in the process (Swift runtime included) passes through here and is
// forwarded to glibc's own entry points (__libc_malloc and friends). The count is thread-local, so
// a test counts exactly what its own thread allocated. Sanitizers bring their own allocator, so the
// interposer is left out there and the tests that need it skip.
#include "CTestSupport.h"
#include <stddef.h>
#include <errno.h>

#if defined(__has_feature)
#  if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#    define CTEST_NO_INTERPOSER 1
#  endif
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#  define CTEST_NO_INTERPOSER 1
#endif

#ifndef CTEST_NO_INTERPOSER
static __thread uint64_t allocations;

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void __libc_free(void *);

void *malloc(size_t size) { allocations++; return __libc_malloc(size); }
void *calloc(size_t n, size_t size) { allocations++; return __libc_calloc(n, size); }
void *realloc(void *p, size_t size) { allocations++; return __libc_realloc(p, size); }
void free(void *p) { __libc_free(p); }
void *memalign(size_t alignment, size_t size) { allocations++; return __libc_memalign(alignment, size); }
void *aligned_alloc(size_t alignment, size_t size) { allocations++; return __libc_memalign(alignment, size); }
int posix_memalign(void **out, size_t alignment, size_t size) {
    if (alignment % sizeof(void *) != 0 || (alignment & (alignment - 1)) != 0) return EINVAL;
    allocations++;
    void *p = __libc_memalign(alignment, size);
    if (!p && size) return ENOMEM;
    *out = p;
    return 0;
}
uint64_t ctest_thread_allocations(void) { return allocations; }
int ctest_allocation_counter_available(void) { return 1; }
#else
uint64_t ctest_thread_allocations(void) { return 0; }
int ctest_allocation_counter_available(void) { return 0; }
#endif
