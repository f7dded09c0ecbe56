import SocketPool

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

    /// Which of the server's listeners accepted it: 0 for the main address, `i + 1` for the server's
    /// `i`-th other ``Listener`` (the metrics endpoint is one); -1 for an outbound connection.
    public var listener: Int {
        guard let listener = ring.core.connection(id)?.pointee.listener else { return 0 }
        return listener == ConnectionRecord.outbound ? -1 : Int(listener)
    }

    /// Whether this ring opened it (``RingContext/connect(to:timeout:)``) rather than accepted it.
    public var isOutbound: Bool { ring.core.connection(id)?.pointee.listener == ConnectionRecord.outbound }

    /// A handle to this connection for any thread or task: keep it to write, close or abort later,
    /// after this callback (``ConnectionHandle``).
    public var handle: ConnectionHandle { ring.handle(id) }

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

    /// Keeps the bytes of the current ``ConnectionHandler/received(_:connection:)`` call in their
    /// receive buffer instead of answering them (the reply is ignored): a handler that cannot pass
    /// them on now (another connection's output is full, say) takes them later, in order, with
    /// ``RingContext/drainHeld(_:_:)``. Held bytes count in the connection's buffer share
    /// (``ServerConfiguration/maxBuffersPerConnection``): past it, its receiving pauses until they
    /// are taken. Only during `received`; elsewhere it does nothing.
    public func holdReceived() {
        let core = ring.core
        if core.replyAnchorSession == Int32(truncatingIfNeeded: id.index), core.connection(id) != nil {
            core.holdReceived = true
        }
    }

    /// Closes once queued output is sent; nothing more is received.
    public func close() { ring.close(id) }

    /// Shuts the output once what is queued is sent (a FIN: `shutdown(SHUT_WR)`), and goes on
    /// receiving: a half-close. Later writes get ``WriteResult/closed``. The connection closes
    /// once the peer's FIN comes too (``ConnectionHandler/inputEnded(_:)``), or on ``close()`` or
    /// ``abort()``.
    public func shutdownOutput() { ring.shutdownOutput(id) }

    /// Closes at once, dropping queued output.
    public func abort() { ring.abort(id) }

    /// Bytes queued and not yet sent.
    public var queuedBytes: Int { ring.queuedBytes(id) ?? 0 }
}

@available(*, unavailable)
extension Connection: Sendable {}
