import CSystemIO
import Glibc

/// A `pthread_mutex_t` that guards no value of its own: a critical section (the producers of a
/// ring's inbox), and the mutex of ``PthreadLock``. (``PthreadLock`` with an empty value would
/// not do for the first: ThreadSanitizer sees the zero-sized value's inout access as racing with
/// reads beside it.)
package final class PthreadMutex: @unchecked Sendable {  // the mutex is only used through pthread calls
    /// At a stable address of its own: `&` on a stored property would be an inout access of it
    /// for the length of the call, which two threads waiting in `pthread_mutex_lock` at once would
    /// overlap (ThreadSanitizer reports it as a Swift access race).
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>

    package init() {
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deinitialize(count: 1)
        mutex.deallocate()
    }

    package func withLock<R>(_ body: () throws -> R) rethrows -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }
}
