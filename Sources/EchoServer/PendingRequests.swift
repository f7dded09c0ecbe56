import SocketPool

/// The requests a connection can have in flight, one bit each. A connection owns one request of
/// each kind, as an IOCP session embeds its `OVERLAPPED`s: its tags are made from its own session
/// lease, so running out of shared contexts can never strand it. The bits set are its `IoCount`.
struct PendingRequests: OptionSet, Hashable, CustomStringConvertible {
    let rawValue: UInt16
    @inline(__always) init(rawValue: UInt16) { self.rawValue = rawValue }

    /// A receive (or an armed multishot receive).
    static let recv = PendingRequests(rawValue: 1 << 0)
    /// A send.
    static let send = PendingRequests(rawValue: 1 << 1)
    /// A cancel of the receive, by its `user_data`.
    static let cancelRecv = PendingRequests(rawValue: 1 << 2)
    /// A cancel of the send, by its `user_data`.
    static let cancelSend = PendingRequests(rawValue: 1 << 3)
    /// The close (or `close_direct`).
    static let close = PendingRequests(rawValue: 1 << 4)
    /// The shutdown of the output (a FIN after what was queued).
    static let shutdown = PendingRequests(rawValue: 1 << 5)
    /// An outbound connection's socket, made into its slot (linked to its connect).
    static let socket = PendingRequests(rawValue: 1 << 6)
    /// An outbound connection's connect.
    static let connect = PendingRequests(rawValue: 1 << 7)
    /// The connect's linked timeout.
    static let connectTimeout = PendingRequests(rawValue: 1 << 8)
    /// A cancel of the connect (a stop or close while it is in flight).
    static let cancelConnect = PendingRequests(rawValue: 1 << 9)
    /// What an outbound connection has in flight before it is open.
    static let connecting = PendingRequests(
        rawValue: socket.rawValue | connect.rawValue | connectTimeout.rawValue | cancelConnect.rawValue)
    /// A receive or its cancel.
    static let receiving = PendingRequests(rawValue: recv.rawValue | cancelRecv.rawValue)

    /// The request of a connection that a tag of `kind` names, or nil for a kind that is not a
    /// connection's own.
    @inline(__always)
    init?(_ kind: RequestKind) {
        switch kind {
        case .recv: self = .recv
        case .send: self = .send
        case .cancelRecv: self = .cancelRecv
        case .cancelSend: self = .cancelSend
        case .close: self = .close
        case .shutdown: self = .shutdown
        case .socket: self = .socket
        case .connect: self = .connect
        case .connectTimeout: self = .connectTimeout
        case .cancelConnect: self = .cancelConnect
        default: return nil
        }
    }

    /// The request of a connection that a tag's kind byte names, or nil: kinds `recv...cancelConnect` are
    /// numbered in the order of these bits, so the bit is `1 << (kind - recv)` (no table, no
    /// switch, on every completion).
    @inline(__always)
    init?(tagKind kind: UInt8) {
        let offset = kind &- RequestKind.recv.rawValue
        guard offset <= RequestKind.cancelConnect.rawValue - RequestKind.recv.rawValue else { return nil }
        self.init(rawValue: 1 << offset)
    }

    /// The tag kind of a single request.
    @inline(__always)
    var kind: RequestKind {
        switch self {
        case .recv: .recv
        case .send: .send
        case .cancelRecv: .cancelRecv
        case .cancelSend: .cancelSend
        case .shutdown: .shutdown
        case .socket: .socket
        case .connect: .connect
        case .connectTimeout: .connectTimeout
        case .cancelConnect: .cancelConnect
        default: .close
        }
    }

    var description: String {
        let names: [(PendingRequests, String)] = [
            (.recv, "recv"), (.send, "send"), (.cancelRecv, "cancelRecv"), (.cancelSend, "cancelSend"), (.close, "close"),
            (.shutdown, "shutdown"), (.socket, "socket"), (.connect, "connect"), (.connectTimeout, "connectTimeout"),
            (.cancelConnect, "cancelConnect"),
        ]
        return "[" + names.filter { contains($0.0) }.map(\.1).joined(separator: ",") + "]"
    }
}
