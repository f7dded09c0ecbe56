import SocketPool

/// What a request is: the kind byte of its ``RequestTag`` (SocketPool leaves its meaning to us).
///
/// A connection's own requests carry the connection's session lease; accepts and the closes of
/// rejected sockets carry a shared context's lease (``SharedRequest``); the loop's control requests
/// carry a fixed tag (``ControlTag``).
enum RequestKind: UInt8, CaseIterable {
    // A connection's own requests (``PendingRequests``).
    case recv = 1
    case send
    case cancelRecv
    case cancelSend
    case close
    case shutdown
    case socket
    case connect
    case connectTimeout
    case cancelConnect
    // Shared contexts.
    case accept
    case closeRejected
    // Control (``ControlTag``).
    case tick
    case wake
    case acceptsCancelled
    case mail
    case mailSent
    case socketOption
}

extension RequestTag {
    /// A tag of `kind` for `lease`.
    @inline(__always)
    init(_ lease: Lease, _ kind: RequestKind) { self.init(lease, kind: kind.rawValue) }

    /// The kind, or nil for a byte no request of ours carries.
    @inline(__always)
    var requestKind: RequestKind? { RequestKind(rawValue: kind) }
}
