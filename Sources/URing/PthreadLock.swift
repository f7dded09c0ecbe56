import Glibc

/// A value guarded by a `pthread_mutex_t`.
///
/// Used instead of `Synchronization.Mutex` because ThreadSanitizer understands pthread mutexes
/// (Mutex's futex fast path is invisible to it and shows as false races). It is off the hot path:
/// stop requests, statistics snapshots, the producers of a ring's inbox and its executor's queue.
package final class PthreadLock<Value>: @unchecked Sendable {  // every access to `value` holds `mutex`
    /// The mutex at a stable address of its own: `&` on a stored property would be an inout access
    /// of it for the length of the call, which two threads waiting in `pthread_mutex_lock` at once
    /// would overlap (ThreadSanitizer reports it as a Swift access race).
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private var value: Value

    package init(_ value: Value) {
        self.value = value
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deinitialize(count: 1)
        mutex.deallocate()
    }

    package func withLock<R>(_ body: (inout Value) throws -> R) rethrows -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }
}
