// The system headers SystemIO and the epoll driver need beyond what Swift's Glibc module brings
// (eventfd, epoll, timerfd, prctl), and helpers for what Swift cannot call (variadic prctl).
#ifndef CSYSTEMIO_H
#define CSYSTEMIO_H

#include <sys/socket.h>
#include <sys/eventfd.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <sys/prctl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <errno.h>

/// Names the calling thread (`prctl(PR_SET_NAME)`, at most 15 bytes kept), as top, perf and /proc
/// show it.
static inline int csystemio_set_thread_name(const char *name) { return prctl(PR_SET_NAME, name, 0, 0, 0); }

/// glibc declares accept4 only under _GNU_SOURCE, which would give this module another fd_set than
/// Glibc's; its prototype, as glibc has it.
extern int accept4(int fd, struct sockaddr *address, socklen_t *length, int flags);

/// `accept4(2)` of a non-blocking, close-on-exec socket (not in Swift's Glibc module).
static inline int csystemio_accept(int listener) {
    return accept4(listener, 0, 0, SOCK_NONBLOCK | SOCK_CLOEXEC);
}

/// The calling thread's errno.
static inline int csystemio_errno(void) { return errno; }

#endif
