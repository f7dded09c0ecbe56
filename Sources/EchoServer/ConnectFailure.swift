import Glibc
import URing

/// Why an outbound connection (``RingContext/connect(to:timeout:)``) did not open.
public enum ConnectFailure: Error, Sendable, Hashable, CustomStringConvertible {
    /// The peer refused it (`ECONNREFUSED`: nothing listens there).
    case refused
    /// No answer within the timeout (or the kernel's own, `ETIMEDOUT`).
    case timedOut
    /// No route to the peer (`ENETUNREACH`, `EHOSTUNREACH`, `EADDRNOTAVAIL`).
    case unreachable
    /// The ring has as many outbound connections as it may
    /// (``ServerConfiguration/maxOutboundConnections``), or no session or slot is free.
    case capReached
    /// The server stopped, or the connection was closed, before it connected.
    case cancelled
    /// Anything else, with the kernel's errno.
    case failed(Errno)

    /// The failure a connect's errno means.
    init(_ errno: Errno) {
        switch errno.rawValue {
        case ECONNREFUSED: self = .refused
        case ETIMEDOUT, ETIME: self = .timedOut
        case ENETUNREACH, EHOSTUNREACH, EADDRNOTAVAIL: self = .unreachable
        case ECANCELED: self = .cancelled
        default: self = .failed(errno)
        }
    }

    public var description: String {
        switch self {
        case .refused: "refused"
        case .timedOut: "timed out"
        case .unreachable: "unreachable"
        case .capReached: "cap reached"
        case .cancelled: "cancelled"
        case .failed(let errno): "failed: \(errno)"
        }
    }
}
