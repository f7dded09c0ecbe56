import SocketPool
import URing

/// Everything a ring's loop knows of one connection, in one record at a stable address: the
/// pool's part (``PooledSession``: its lease, epoch, socket and buffer), its life
/// (``ConnectionLifecycle``), its send queue's links, what it holds, and its counters.
///
/// Kept by the ring's ``SessionPool``; the loop reaches it through a ``ConnectionRef``: by a
/// completion's tag (the session lease), by a ``ConnectionID`` (index and epoch), or by index in a
/// sweep.
struct ConnectionRecord: SessionRecord {
    let session: PooledSession
    var lifecycle = ConnectionLifecycle()
    /// Its send queue (segments in the ring's ``SendQueue``).
    var output = OutputQueue()
    /// Received segments its handler holds for later (an async connection's inbound bytes, not
    /// yet consumed), and the one being consumed.
    var inbound = InboundQueue()
    /// Provided buffers held (received and not yet sent or given back); with an incremental ring,
    /// the buffers its slices' bytes would fill (at least one per slice).
    var buffersHeld: Int32 = 0
    /// Which of the server's listeners accepted it: 0 for the main one; ``outbound`` for a
    /// connection this ring opened.
    var listener: UInt8 = 0
    /// Whether the handler heard of it (``ConnectionHandler/opened(_:)``): it then hears
    /// `closed`; an outbound connection that never opened hears `connectFailed` instead.
    var announced = false
    /// An outbound connection's connect: the first error its requests returned (negative errno),
    /// and whether its timeout fired.
    var connectError: Int32 = 0
    var connectTimedOut = false
    /// Monotonic time of the last progress either way, in nanoseconds: bytes received, or bytes the
    /// peer took (a send completed). The idle timeout counts from it.
    var lastActivity: UInt64 = 0
    /// Monotonic time the current wait of the send queue began (a send posted after the queue was
    /// empty, or the last send completed), in nanoseconds. The stall timeout counts from it while
    /// output is queued.
    var lastProgress: UInt64 = 0
    /// Total bytes received.
    var bytesIn: UInt64 = 0
    /// Total bytes sent.
    var bytesOut: UInt64 = 0
    /// Bytes written from other threads (``ConnectionHandle``) queued and not yet sent: their room
    /// goes back to the writers as bytes are sent.
    var remoteQueued = 0
    /// The epoll driver's readiness of its socket (``EpollCore``'s bits: readable, writable, the
    /// peer done, a writable callback due); unused by the io_uring driver.
    var readiness: UInt8 = 0

    init(_ session: PooledSession) { self.session = session }

    /// ``listener`` of an outbound connection.
    static let outbound = UInt8.max

    /// Why an outbound connection that never opened failed.
    var connectFailure: ConnectFailure {
        if connectTimedOut { return .timedOut }
        if connectError != 0 { return ConnectFailure(Errno(rawValue: -connectError)) }
        return .cancelled
    }

    /// The `user_data` of its own request `request`.
    @inline(__always)
    func tag(_ request: PendingRequests) -> UInt64 { RequestTag(session.lease, request.kind).rawValue }

    /// What ``ConnectionLifecycle/settle(_:_:)`` weighs.
    @inline(__always)
    var holdings: ConnectionLifecycle.Holdings {
        .init(
            queued: output.head >= 0, queuedBytes: output.bytes, buffersHeld: buffersHeld,
            outboundHeld: output.outboundHeld, inputHeld: inbound.head >= 0 || inbound.current >= 0)
    }
}

/// A connection's record, where its pool keeps it. Valid until the session is released.
typealias ConnectionRef = UnsafeMutablePointer<ConnectionRecord>
