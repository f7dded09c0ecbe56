import CSystemIO
import Glibc

/// A value guarded by a `pthread_mutex_t`.
///
/// Used instead of `Synchronization.Mutex` because ThreadSanitizer understands pthread mutexes
/// (Mutex's futex fast path is invisible to it and shows as false races). It is off the hot path:
/// stop requests, statistics snapshots, the producers of a ring's inbox and its executor's queue.
package final class PthreadLock<Value>: @unchecked Sendable {  // every access to `value` holds `mutex`
    /// The mutex (at a stable address of its own, ``PthreadMutex``).
    private let mutex = PthreadMutex()
    private var value: Value

    package init(_ value: Value) {
        self.value = value
    }

    package func withLock<R>(_ body: (inout Value) throws -> R) rethrows -> R {
        try mutex.withLock { try body(&value) }
    }
}
