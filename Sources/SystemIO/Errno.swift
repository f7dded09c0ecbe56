import CSystemIO
import Glibc

/// A POSIX error number with its symbolic name.
///
/// Completions carry errors as negative `res` values; system calls report them through `errno`.
/// Both end up here so a message can say `ECONNRESET` rather than `-104`.
public struct Errno: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    /// The positive errno value (`ECONNRESET` is 104 on Linux).
    public let rawValue: Int32

    /// Wraps a positive errno value.
    /// - Parameter rawValue: the errno value, for example `Glibc.ECONNRESET`.
    public init(rawValue: Int32) { self.rawValue = rawValue }

    /// The symbolic name (`"ECONNRESET"`), or `"errno N"` for a value this table does not know.
    public var name: String {
        Errno.names[rawValue] ?? "errno \(rawValue)"
    }

    /// The C library's text for this error (`strerror`).
    public var message: String { String(cString: strerror(rawValue)) }

    /// `ECONNRESET (Connection reset by peer)`.
    public var description: String { "\(name) (\(message))" }

    /// The calling thread's current `errno`.
    public static var current: Errno { Errno(rawValue: csystemio_errno()) }

    /// `EPERM`
    public static let notPermitted = Errno(rawValue: EPERM)
    /// `ENOENT`
    public static let noEntry = Errno(rawValue: ENOENT)
    /// `EINTR`
    public static let interrupted = Errno(rawValue: EINTR)
    /// `EAGAIN`
    public static let wouldBlock = Errno(rawValue: EAGAIN)
    /// `EBADF`
    public static let badDescriptor = Errno(rawValue: EBADF)
    /// `EBUSY`
    public static let busy = Errno(rawValue: EBUSY)
    /// `EINVAL`
    public static let invalidArgument = Errno(rawValue: EINVAL)
    /// `ENFILE`
    public static let systemFileTableFull = Errno(rawValue: ENFILE)
    /// `EMFILE`
    public static let processFileTableFull = Errno(rawValue: EMFILE)
    /// `ENOMEM`
    public static let noMemory = Errno(rawValue: ENOMEM)
    /// `EPIPE`
    public static let brokenPipe = Errno(rawValue: EPIPE)
    /// `ENOSYS`
    public static let notImplemented = Errno(rawValue: ENOSYS)
    /// `ETIME`: a timeout request expired.
    public static let timerExpired = Errno(rawValue: ETIME)
    /// `ENOBUFS`: no provided buffer was available.
    public static let noBufferSpace = Errno(rawValue: ENOBUFS)
    /// `ECANCELED`: the request was cancelled.
    public static let canceled = Errno(rawValue: ECANCELED)
    /// `ECONNRESET`
    public static let connectionReset = Errno(rawValue: ECONNRESET)
    /// `ECONNABORTED`: a connection was reset before it was accepted.
    public static let connectionAborted = Errno(rawValue: ECONNABORTED)
    /// `ECONNREFUSED`
    public static let connectionRefused = Errno(rawValue: ECONNREFUSED)
    /// `ENOTCONN`
    public static let notConnected = Errno(rawValue: ENOTCONN)
    /// `EALREADY`
    public static let already = Errno(rawValue: EALREADY)
    /// `EINPROGRESS`
    public static let inProgress = Errno(rawValue: EINPROGRESS)
    /// `EADDRINUSE`
    public static let addressInUse = Errno(rawValue: EADDRINUSE)
    /// `EOPNOTSUPP`
    public static let notSupported = Errno(rawValue: EOPNOTSUPP)
    /// `ENXIO`
    public static let noSuchDevice = Errno(rawValue: ENXIO)
    /// `EBADR`: `io_uring_enter` reports completions the kernel had to drop.
    public static let droppedCompletions = Errno(rawValue: EBADR)

    private static let names: [Int32: String] = [
        EPERM: "EPERM", ENOENT: "ENOENT", ESRCH: "ESRCH", EINTR: "EINTR", EIO: "EIO", ENXIO: "ENXIO",
        E2BIG: "E2BIG", EBADF: "EBADF", EAGAIN: "EAGAIN", ENOMEM: "ENOMEM", EACCES: "EACCES",
        EFAULT: "EFAULT", EBUSY: "EBUSY", EEXIST: "EEXIST", ENODEV: "ENODEV", EINVAL: "EINVAL",
        ENFILE: "ENFILE", EMFILE: "EMFILE", ENOSPC: "ENOSPC", EPIPE: "EPIPE", ERANGE: "ERANGE",
        ENOSYS: "ENOSYS", EOVERFLOW: "EOVERFLOW", ETIME: "ETIME", ENOTSOCK: "ENOTSOCK",
        EDESTADDRREQ: "EDESTADDRREQ", EMSGSIZE: "EMSGSIZE", EPROTOTYPE: "EPROTOTYPE",
        ENOPROTOOPT: "ENOPROTOOPT", EPROTONOSUPPORT: "EPROTONOSUPPORT", EOPNOTSUPP: "EOPNOTSUPP",
        EAFNOSUPPORT: "EAFNOSUPPORT", EADDRINUSE: "EADDRINUSE", EADDRNOTAVAIL: "EADDRNOTAVAIL",
        ENETDOWN: "ENETDOWN", ENETUNREACH: "ENETUNREACH", ECONNABORTED: "ECONNABORTED",
        ECONNRESET: "ECONNRESET", ENOBUFS: "ENOBUFS", EISCONN: "EISCONN", ENOTCONN: "ENOTCONN",
        ESHUTDOWN: "ESHUTDOWN", ETIMEDOUT: "ETIMEDOUT", ECONNREFUSED: "ECONNREFUSED",
        EHOSTUNREACH: "EHOSTUNREACH", EALREADY: "EALREADY", EINPROGRESS: "EINPROGRESS",
        ECANCELED: "ECANCELED", EOWNERDEAD: "EOWNERDEAD", EBADFD: "EBADFD", EBADR: "EBADR",
    ]
}
