import SocketPool

/// What a write did.
public enum WriteResult: Sendable, Hashable {
    /// Every byte was queued; they are sent in order.
    case queued
    /// Nothing was queued: the connection's output bound
    /// (``ServerConfiguration/maxOutputBytesPerConnection``) or the ring's outbound buffers would be
    /// exceeded. ``ConnectionHandler/writable(_:)`` is called once the queue drains.
    case full
    /// Nothing was queued: the connection is closing, closed, or the ID is stale.
    case closed
}

/// What a post to another ring did.
public enum PostResult: Sendable, Hashable {
    /// The message is in the target ring's mailbox; the target's handler receives it in order.
    case posted
    /// Nothing was posted: the mailbox from this ring to the target is full
    /// (``ServerConfiguration/mailboxBytes``), or the message is larger than a quarter of it.
    case full
    /// No ring has that index, or it has stopped.
    case noSuchRing
}

/// The ring a callback runs on: write to or close any of its connections by ID, and post to the
/// server's other rings. Valid only during the callback it was passed to, on the ring's thread.
public struct RingContext {
    // The loop outlives every callback it makes, and a RingContext is not Sendable and is only
    // handed to callbacks, so the reference cannot dangle.
    unowned(unsafe) let core: LoopCore

    init(_ core: LoopCore) { self.core = core }

    /// This ring's index, `0..<count`.
    public var index: Int { core.ringIndex }
    /// The number of rings (threads) of the server.
    public var count: Int { core.mailboxes.count }

    /// Queues a copy of `bytes` for `connection`, after what is already queued.
    /// - Parameters:
    ///   - bytes: what to send; copied before the call returns.
    ///   - connection: a connection of this ring.
    /// - Returns: whether the bytes were queued (all of them) or refused (none).
    @discardableResult
    public func write(_ bytes: UnsafeRawBufferPointer, to connection: ConnectionID) -> WriteResult {
        core.write(bytes, to: connection)
    }

    /// Closes `connection` once its queued output is sent (no more receiving).
    /// - Parameter connection: a connection of this ring; a stale ID is ignored.
    public func close(_ connection: ConnectionID) { core.requestClose(connection, abort: false) }

    /// Closes `connection` at once, dropping queued output.
    /// - Parameter connection: a connection of this ring; a stale ID is ignored.
    public func abort(_ connection: ConnectionID) { core.requestClose(connection, abort: true) }

    /// Stops receiving on `connection` until ``resumeReceiving(_:)``: flow control for a handler
    /// that relays one connection's bytes to another and must not read faster than it can write.
    /// Bytes the peer sends meanwhile wait in the kernel (and TCP slows the peer).
    /// - Parameter connection: a connection of this ring; a stale ID is ignored.
    public func pauseReceiving(_ connection: ConnectionID) { core.pauseReceiving(connection, true) }

    /// Receives again on a connection paused with ``pauseReceiving(_:)``.
    /// - Parameter connection: a connection of this ring; a stale ID is ignored.
    public func resumeReceiving(_ connection: ConnectionID) { core.pauseReceiving(connection, false) }

    /// Bytes queued and not yet sent on `connection`, or `nil` for a stale ID.
    /// - Parameter connection: a connection of this ring.
    public func queuedBytes(_ connection: ConnectionID) -> Int? { core.queuedBytes(connection) }

    /// Posts a message to another ring of the server: the `PostQueuedCompletionStatus` of this
    /// design. The bytes are copied into a bounded mailbox from this ring to that one, and the
    /// target is woken by a completion posted into its queue (`IORING_OP_MSG_RING`, Linux 5.18) or,
    /// without it, an eventfd write. Messages from one ring to another arrive in order.
    /// - Parameters:
    ///   - bytes: the message; at most a quarter of the mailbox.
    ///   - value: a 64-bit value delivered with it.
    ///   - ring: the target ring's index (may be this ring's own).
    /// - Returns: whether it was posted.
    @discardableResult
    public func post(_ bytes: UnsafeRawBufferPointer, value: UInt64 = 0, toRing ring: Int) -> PostResult {
        core.post(bytes, value: value, to: ring)
    }
}

@available(*, unavailable)
extension RingContext: Sendable {}

/// One connection, as seen from a callback: the handle a handler writes and closes through.
/// Valid only during the callback it was passed to; keep its ``id`` to reach it later.
public struct Connection {
    /// The connection's identity.
    public let id: ConnectionID
    /// The ring it belongs to.
    public let ring: RingContext

    init(_ id: ConnectionID, _ core: LoopCore) {
        self.id = id
        self.ring = RingContext(core)
    }

    /// The session index (``ConnectionID/index``).
    public var index: Int { id.index }

    /// Which of the server's listeners accepted it: 0 for the main address, 1 for the metrics
    /// endpoint's (see ``MetricsEndpoint``).
    public var listener: Int { ring.core.session(id).map { Int($0.pointee.listener) } ?? 0 }

    /// Queues a copy of `bytes`, after what is already queued (and after the in-place reply of the
    /// current ``ConnectionHandler/received(_:connection:)`` call).
    /// - Parameter bytes: what to send.
    /// - Returns: ``WriteResult/queued`` (all of them) or a refusal (none of them).
    @discardableResult
    public func write(_ bytes: UnsafeRawBufferPointer) -> WriteResult { ring.write(bytes, to: id) }

    /// Queues a copy of `bytes`.
    /// - Parameter bytes: what to send.
    /// - Returns: ``WriteResult/queued`` or a refusal.
    @discardableResult
    public func write(_ bytes: [UInt8]) -> WriteResult {
        bytes.withUnsafeBytes { ring.write($0, to: id) }
    }

    /// Queues the UTF-8 bytes of `text`.
    /// - Parameter text: what to send.
    /// - Returns: ``WriteResult/queued`` or a refusal.
    @discardableResult
    public func write(_ text: String) -> WriteResult {
        var text = text
        return text.withUTF8 { ring.write(UnsafeRawBufferPointer($0), to: id) }
    }

    /// Asks for ``ConnectionHandler/writable(_:)`` once queued output drains below the low-water
    /// mark (half of ``ServerConfiguration/maxPendingBytesPerConnection``): for a handler that
    /// keeps its own output budget below the connection's bound. With nothing queued, it comes on
    /// the next housekeeping tick.
    public func requestWritable() { ring.core.requestWritable(id) }

    /// Closes once queued output is sent; nothing more is received.
    public func close() { ring.close(id) }

    /// Closes at once, dropping queued output.
    public func abort() { ring.abort(id) }

    /// Bytes queued and not yet sent.
    public var queuedBytes: Int { ring.queuedBytes(id) ?? 0 }
}

@available(*, unavailable)
extension Connection: Sendable {}
