import SocketPool

/// A byte-stream protocol served by the completion loop: the completion routine of an IOCP
/// server, split into the events a connection goes through.
///
/// The loop calls it on its ring's thread only, one call at a time, so a handler needs no locks;
/// each ring thread gets its own instance. Keep per-connection state in storage sized once in
/// ``start(capacity:)`` and indexed by ``ConnectionID/index``.
///
/// Two ways to answer:
/// - **In place** (the fast path): ``received(_:connection:)`` may rewrite the received buffer and
///   returns how many bytes at its front to send back. Nothing is copied; echo returns them all.
/// - **Written** (anything else): `Connection.write(_:)` copies bytes of any length into the
///   ring's pooled outbound buffers, from any callback, to this or another connection of the ring.
///   Written bytes go out in order, after the in-place reply of the same call.
public protocol ConnectionHandler: SendableMetatype {
    /// Called once, before any connection, with the most connections this instance will see at once.
    /// - Parameter capacity: the session pool's capacity.
    mutating func start(capacity: Int)
    /// A connection was accepted, or an outbound one connected (``Connection/isOutbound``). Write a
    /// greeting here, if the protocol has one.
    /// - Parameter connection: the new connection.
    mutating func opened(_ connection: Connection)
    /// Bytes arrived on `connection`.
    /// - Parameters:
    ///   - bytes: the received bytes, writable in place; valid only during the call.
    ///   - connection: where they came from.
    /// - Returns: how many bytes at the front of `bytes` to send, and whether to close after.
    mutating func received(_ bytes: UnsafeMutableRawBufferPointer, connection: Connection) -> Reply
    /// Output queued on `connection` drained below its low-water mark after a write was refused
    /// (``WriteResult/full``) or the queue passed its high-water mark: write more now.
    /// - Parameter connection: the connection.
    mutating func writable(_ connection: Connection)
    /// The peer finished sending (its FIN: a receive returned 0). Nothing more will be received;
    /// writing may go on. The connection closes once the handler closes it (``Connection/close()``,
    /// after what is queued is sent) or aborts it. By default it closes at once, so the reply to
    /// what was received goes out and then the connection ends.
    /// - Parameter connection: the connection.
    mutating func inputEnded(_ connection: Connection)
    /// A connection ended (after its close completed); its ID is stale from now on.
    /// - Parameter connection: its identity.
    mutating func closed(_ connection: ConnectionID)
    /// A connection ended, with its ring, to act on the ring's other connections (close the other
    /// side of a pair, say). By default calls ``closed(_:)``.
    /// - Parameters:
    ///   - connection: its identity, stale from now on.
    ///   - ring: the ring, for this call only.
    mutating func closed(_ connection: ConnectionID, ring: RingContext)
    /// A connection ended, with how: cleanly, or abnormally (a reset by the peer, an error, an
    /// abort, output the peer stopped reading, or a close that dropped queued or held bytes), so
    /// that a relay can pass an abnormal end on as one (abort the other side) rather than as a
    /// clean end of stream with bytes missing. By default calls ``closed(_:ring:)``.
    /// - Parameters:
    ///   - connection: its identity, stale from now on.
    ///   - end: how it ended.
    ///   - ring: the ring, for this call only.
    mutating func closed(_ connection: ConnectionID, end: ConnectionEnd, ring: RingContext)
    /// An outbound connection (``RingContext/connect(to:timeout:)``) did not open: it was refused,
    /// timed out, had no route, or was cancelled. Its ID, returned by `connect`, is stale from now
    /// on; it hears no `opened` and no `closed`.
    /// - Parameters:
    ///   - connection: the ID `connect` returned.
    ///   - failure: why.
    ///   - ring: the ring, for this call only.
    mutating func connectFailed(_ connection: ConnectionID, _ failure: ConnectFailure, ring: RingContext)
    /// Whether a connection stops receiving while its own unsent output is over
    /// ``ServerConfiguration/maxPendingBytesPerConnection`` (true by default): right for a protocol
    /// that answers what it receives (echo, request and response), where a peer that does not read
    /// must not make the server read on. A relay whose output is another connection's input (a
    /// proxy) says false: otherwise two relays facing each other could each stop reading until the
    /// other reads. Its connections then stop receiving only for what they hold
    /// (``ServerConfiguration/maxBuffersPerConnection``, held bytes included), and its writes meet
    /// the output bound (``WriteResult/full``).
    static var pausesReceivingForQueuedOutput: Bool { get }
    /// Another ring of the server posted a message to this one.
    /// - Parameters:
    ///   - message: what was posted.
    ///   - ring: this ring, to write to its connections.
    mutating func received(message: RingMessage, ring: RingContext)
}

extension ConnectionHandler {
    /// True: a connection stops receiving while its output backs up.
    public static var pausesReceivingForQueuedOutput: Bool { true }
    /// Does nothing.
    public mutating func start(capacity: Int) {}
    /// Does nothing.
    public mutating func opened(_ connection: Connection) {}
    /// Does nothing.
    public mutating func writable(_ connection: Connection) {}
    /// Closes the connection once its queued output is sent.
    public mutating func inputEnded(_ connection: Connection) { connection.close() }
    /// Does nothing.
    public mutating func closed(_ connection: ConnectionID) {}
    /// Calls ``closed(_:)``.
    public mutating func closed(_ connection: ConnectionID, ring: RingContext) { closed(connection) }
    /// Calls ``closed(_:ring:)``.
    public mutating func closed(_ connection: ConnectionID, end: ConnectionEnd, ring: RingContext) {
        closed(connection, ring: ring)
    }
    /// Does nothing.
    public mutating func received(message: RingMessage, ring: RingContext) {}
    /// Does nothing.
    public mutating func connectFailed(_ connection: ConnectionID, _ failure: ConnectFailure, ring: RingContext) {}
}

/// How a connection ended (``ConnectionHandler/closed(_:end:ring:)``).
public enum ConnectionEnd: Sendable, Hashable {
    /// Both directions finished, or a close after the queued output: nothing was dropped.
    case clean
    /// Reset by the peer, an error, an abort, output the peer stopped reading, or a close (an idle
    /// timeout, a stop) that dropped bytes still queued or held: the other end may be missing some.
    case abnormal
}
