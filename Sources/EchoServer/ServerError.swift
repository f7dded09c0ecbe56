import SocketPool
import URing

/// What can go wrong starting or running a server.
public enum ServerError: Error, Sendable, Hashable, CustomStringConvertible {
    /// A configuration value is out of range.
    case invalidConfiguration(String)
    /// A ring, listener or registration could not be set up.
    case setup(URingError)
    /// The server was started twice.
    case alreadyStarted
    /// ``Server/stop()`` came before ``Server/start()``: a stopped server does not start.
    case stopped
    /// A ring ended on an error it cannot recover from, and the server stopped.
    case ringFailed(ring: Int, URingError)
    /// io_uring cannot be used here: ring setup (`io_uring_queue_init_params`) failed with `EPERM`
    /// or `ENOSYS`. The text names the causes found (`kernel.io_uring_disabled`, a container's
    /// seccomp profile, a kernel without io_uring) and their fixes (`IOUring.unavailableReason(for:)`).
    case ioUringUnavailable(String)

    /// The error for a failed setup step: ``ioUringUnavailable(_:)``, explained, where ring setup
    /// was refused with `EPERM` or `ENOSYS`, ``setup(_:)`` otherwise.
    /// - Parameter error: what the setup step threw.
    package init(setupFailure error: URingError) {
        self =
            IOUring.isUnavailable(error)
            ? .ioUringUnavailable(IOUring.unavailableReason(for: error.errno)) : .setup(error)
    }

    /// A sentence a person can act on.
    public var description: String {
        switch self {
        case .invalidConfiguration(let why): return "invalid configuration: \(why)"
        case .setup(let error): return "server setup failed: \(error)"
        case .alreadyStarted: return "the server was already started"
        case .stopped: return "the server was stopped before it started"
        case .ringFailed(let ring, let error): return "ring \(ring) failed: \(error)"
        case .ioUringUnavailable(let explanation): return explanation
        }
    }
}
