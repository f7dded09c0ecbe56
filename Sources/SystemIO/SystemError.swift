import CSystemIO
import Glibc

/// The error every system call of the project throws, and every io_uring request (`URing` calls
/// it `URingError`): which operation failed and with which errno.
///
/// A negative completion result becomes one of these through `Completion.check(_:)`, so no failed
/// request is silently taken for a byte count.
public struct SystemError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What was attempted: a liburing call (`io_uring_queue_init_params`) or a request (`recv`).
    public let operation: String
    /// Why it failed.
    public let errno: Errno

    /// Creates an error for `operation` failing with `errno`.
    /// - Parameters:
    ///   - operation: the call or request that failed.
    ///   - errno: the error number it reported.
    public init(_ operation: String, errno: Errno) {
        self.operation = operation
        self.errno = errno
    }

    /// Creates an error from a negative return value (`-errno`, as liburing and the kernel report).
    /// - Parameters:
    ///   - operation: the call or request that failed.
    ///   - negativeResult: the value it returned, for example `-ECONNRESET`.
    public init(_ operation: String, result negativeResult: Int32) {
        self.init(operation, errno: Errno(rawValue: -negativeResult))
    }

    /// `recv failed: ECONNRESET (Connection reset by peer)`.
    public var description: String { "\(operation) failed: \(errno)" }
}
