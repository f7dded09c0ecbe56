/// One connection, as an ``AsyncServer``'s `serve` closure gets it: its input as an
/// `AsyncSequence` of chunks (``inbound``), a writer (``outbound``), and a ``handle`` for other
/// tasks and threads.
///
/// The closure runs in a child task of the server's task group, on the connection's ring's
/// thread (the task prefers the ring's executor, ``RingHandle/executor``), so awaiting the next chunk or room to
/// write costs no thread hop. Leaving the closure closes the connection once what is queued is
/// sent; a thrown error aborts it.
public struct AsyncConnection: Sendable {
    let ring: AsyncRing
    /// The connection's identity.
    public let id: ConnectionID
    /// A handle for other tasks and threads (``ConnectionHandle``).
    public let handle: ConnectionHandle
    /// Which of the server's listeners accepted it: 0 for the main one, -1 for an outbound
    /// connection (``AsyncServer/withConnection(to:timeout:_:)``).
    public let listener: Int

    /// Whether the server opened it (``AsyncServer/withConnection(to:timeout:_:)``) rather than
    /// accepted it.
    public var isOutbound: Bool { listener < 0 }

    init(ring: AsyncRing, id: ConnectionID, handle: ConnectionHandle, listener: Int) {
        self.ring = ring
        self.id = id
        self.handle = handle
        self.listener = listener
    }

    /// The bytes the peer sends, chunk by chunk, until its FIN (or the connection closes, or the
    /// iterating task is cancelled: the iteration then ends, as Swift's `AsyncSequence`s do).
    ///
    /// Receiving pauses while the consumer lags: chunks not yet taken count in the connection's
    /// share of receive buffers (``ServerConfiguration/maxBuffersPerConnection``), and past it the
    /// connection stops receiving until the consumer catches up (to half), so a slow consumer
    /// holds bounded memory.
    public var inbound: Inbound { Inbound(connection: self) }

    /// Writes to the connection, waiting while its output is at its bound.
    public var outbound: Outbound { Outbound(connection: self) }

    /// Runs `body` on the connection's ring: at once when already there (its own task), after a
    /// hop otherwise; `whenGone` if the ring has exited.
    @inline(__always)
    nonisolated(nonsending) func onRing<T>(_ whenGone: T, _ body: nonisolated(nonsending) (AsyncRing) async -> T) async -> T {
        guard let executor = ring.executor, !executor.hasExited else { return whenGone }
        if executor.isCurrent { return await body(ring) }
        // From elsewhere (an actor's method, another ring's task): hop to the ring, nonisolated,
        // so the body runs on the preferred executor rather than on the caller's actor.
        return await withTaskExecutorPreference(executor, isolation: nil) {
            executor.isCurrent ? await body(ring) : whenGone
        }
    }

    /// Its task is done with it: close once what is queued is sent, or abort (after an error);
    /// through the handle if the ring has exited.
    nonisolated(nonsending) func finish(abort: Bool) async {
        let id = id
        let done = await onRing(false) { ring in
            ring.finish(id, abort: abort)
            return true
        }
        if !done { if abort { handle.abort() } else { handle.close() } }
    }

    /// A connection's input: an `AsyncSequence` of ``InboundChunk``s, ending at the peer's FIN or
    /// when the connection closes.
    public struct Inbound: AsyncSequence, Sendable {
        public typealias Element = InboundChunk
        let connection: AsyncConnection

        public func makeAsyncIterator() -> Iterator { Iterator(connection: connection) }

        /// Takes the chunks one by one. A chunk is valid until the next call to ``next()``, or until its
        /// connection closes. One task reads a connection's input at a time: a second reader waiting
        /// at once gets nil.
        public struct Iterator: AsyncIteratorProtocol {
            let connection: AsyncConnection

            /// The next chunk, waiting for it; nil at the input's end, or once the task is cancelled.
            public nonisolated(nonsending) mutating func next() async -> InboundChunk? {
                let id = connection.id
                return await connection.onRing(nil) { await $0.next(id) }
            }
        }
    }

    /// A connection's output.
    public struct Outbound: Sendable {
        let connection: AsyncConnection

        /// Queues a copy of `bytes`, after what is queued, waiting while the connection's output is
        /// at its bound (``ServerConfiguration/maxOutputBytesPerConnection``), or its share of the
        /// ring's outbound buffers is taken, until the peer has read enough. Several tasks may
        /// write to one connection; each write's bytes stay together.
        /// - Parameter bytes: what to send.
        /// - Throws: ``AsyncConnectionError/closed`` if the connection has closed;
        ///   ``AsyncConnectionError/tooLarge`` for bytes larger than the output bound itself (or
        ///   than one connection can ever hold of the ring's outbound buffers);
        ///   ``AsyncConnectionError/cancelled`` if the task was cancelled while the write waited
        ///   (nothing was queued).
        public nonisolated(nonsending) func write(_ bytes: UnsafeRawBufferPointer) async throws(AsyncConnectionError) {
            let id = connection.id
            // The bytes are only read on the ring, while this task waits for the write.
            nonisolated(unsafe) let bytes = bytes
            let result = await connection.onRing(WriteResult.closed) { ring in
                await ring.write(count: bytes.count, to: id) { ring.core.write(bytes, to: id) }
            }
            try Self.outcome(result)
        }

        /// What a write's result means to its caller: nil is a cancelled wait.
        static func outcome(_ result: WriteResult?) throws(AsyncConnectionError) {
            switch result {
            case .queued: return
            case .full: throw .tooLarge
            case .closed: throw .closed
            case nil: throw .cancelled
            }
        }

        /// Queues a copy of `bytes`, waiting for room.
        /// - Parameter bytes: what to send.
        /// - Throws: as ``write(_:)-(UnsafeRawBufferPointer)``.
        public nonisolated(nonsending) func write(_ bytes: [UInt8]) async throws(AsyncConnectionError) {
            let id = connection.id
            let result = await connection.onRing(WriteResult.closed) { ring in
                await ring.write(count: bytes.count, to: id) { bytes.withUnsafeBytes { ring.core.write($0, to: id) } }
            }
            try Self.outcome(result)
        }

        /// Queues the UTF-8 bytes of `text`, waiting for room.
        /// - Parameter text: what to send.
        /// - Throws: as ``write(_:)-(UnsafeRawBufferPointer)``.
        public nonisolated(nonsending) func write(_ text: String) async throws(AsyncConnectionError) {
            try await write(Array(text.utf8))
        }

        /// Shuts the output once what is queued is sent (a FIN), while ``AsyncConnection/inbound``
        /// goes on: a half-close. Later writes throw ``AsyncConnectionError/closed``.
        public nonisolated(nonsending) func finish() async {
            let id = connection.id
            let done = await connection.onRing(false) { ring in
                ring.core.requestShutdown(id)
                return true
            }
            if !done { connection.handle.shutdownOutput() }
        }

        /// Sends `chunk`, the connection's own input being consumed, as it is: no copy (its
        /// receive buffer goes back once sent). The chunk is used up. Any other chunk is copied.
        /// - Parameter chunk: a chunk of input.
        /// - Throws: as ``write(_:)-(UnsafeRawBufferPointer)``.
        public nonisolated(nonsending) func write(_ chunk: InboundChunk) async throws(AsyncConnectionError) {
            if chunk.id == connection.id, chunk.ring === connection.ring {
                let result = await connection.onRing(WriteResult?.some(.closed)) { ring -> WriteResult? in
                    guard ring.record(chunk.id) != nil else { return .closed }
                    return ring.isCurrent(chunk) ? ring.send(chunk) : .full
                }
                switch result {
                case .queued: return
                case .closed: throw .closed
                case .full: throw .invalidChunk  // next() was called since, or it was written already
                case nil: break  // writes of this connection wait in the inbox: copied behind them
                }
            }
            try await copy(chunk)
        }

        /// Writes another connection's chunk (a proxy, say): its bytes are copied into the output
        /// at once when there is room (no allocation); else kept in an array while this waits,
        /// since the chunk's buffer goes back if its connection closes meanwhile. Apart from
        /// ``write(_:)-(InboundChunk)`` so that the zero-copy path's frame stays small.
        nonisolated(nonsending) func copy(_ chunk: InboundChunk) async throws(AsyncConnectionError) {
            let id = connection.id
            let result = await connection.onRing(WriteResult.closed) { ring in
                guard chunk.isValid else { return .full }
                return ring.core.write(chunk.buffer, to: id)
            }
            switch result {
            case .queued: return
            case .closed: throw .closed
            case .full:
                guard chunk.isValid else { throw .invalidChunk }
                try await write(chunk.bytes)
            }
        }
    }
}

/// Why an ``AsyncConnection``'s write failed.
public enum AsyncConnectionError: Error, Sendable, Hashable {
    /// The connection has closed (the peer reset it, it timed out, the server stopped, or it was
    /// closed).
    case closed
    /// The bytes are larger than the connection's output bound itself
    /// (``ServerConfiguration/maxOutputBytesPerConnection``) and can never fit: write them in parts.
    case tooLarge
    /// The ``InboundChunk`` written is no longer valid: its connection's `next()` was called since,
    /// it was written already, or it was read away from its connection's ring.
    case invalidChunk
    /// The task was cancelled while the write waited for room: nothing was queued.
    case cancelled
}

/// Received bytes, zero copy: a view of the receive buffer they landed in, valid until the next
/// call to its connection's ``AsyncConnection/Inbound/Iterator/next()``, until it is written out
/// with ``AsyncConnection/Outbound/write(_:)-(InboundChunk)``, or until its connection closes (the
/// buffer goes back to the ring then). A chunk no longer valid reads as empty. Keep ``bytes`` (a
/// copy) to use them later. Read it on the connection's task (its ring's thread).
public struct InboundChunk {
    let ring: AsyncRing
    let id: ConnectionID
    let number: UInt64
    let buffer: UnsafeRawBufferPointer

    init(ring: AsyncRing, id: ConnectionID, number: UInt64, bytes: UnsafeRawBufferPointer) {
        self.ring = ring
        self.id = id
        self.number = number
        self.buffer = bytes
    }

    /// Whether the chunk's bytes may still be read: on its connection's ring, before the next call
    /// to `next()`, before it is written out, while the connection is open.
    public var isValid: Bool { ring.onRing && ring.isCurrent(self) }

    /// Bytes in the chunk; 0 once it is no longer valid.
    public var count: Int { isValid ? buffer.count : 0 }

    /// Calls `body` with the bytes: none once the chunk is no longer valid (``isValid``).
    /// - Parameter body: reads the bytes; they are valid only during the call.
    /// - Returns: what `body` returns.
    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try body(isValid ? buffer : UnsafeRawBufferPointer(start: nil, count: 0))
    }

    /// A copy of the bytes, to keep.
    public var bytes: [UInt8] { withUnsafeBytes { Array($0) } }
}
