import URing

/// A TCP proxy: each accepted connection gets an outbound connection to `upstream` on the same
/// ring, and the bytes of each side are written to the other, in order.
///
/// - **Flow control.** A side's bytes are copied into the other side's output; when that is full
///   (its output bound, or the ring's outbound buffers), they stay held in their receive buffers
///   (``Connection/holdReceived()``) and go on once the other side drains
///   (``ConnectionHandler/writable(_:)``). Held bytes count in the side's buffer share, so its
///   receiving pauses: a slow side holds bounded memory and slows only its own pair.
/// - **Half-close.** A FIN from either side becomes a shutdown of the other side's output, after
///   what came before it; the pair closes once both directions are done.
/// - **Failures.** Until the upstream connects, the client's receiving is paused (its bytes wait
///   in the kernel). An upstream that refuses or times out closes the client at once. A side that
///   closes cleanly closes the other (after its queued output); a side that ends abnormally (a
///   reset, an error, output its peer stopped reading, or a close that dropped bytes it held)
///   aborts the other, so its peer sees a reset, not a clean end of stream with bytes missing.
///
/// - **TIME_WAIT.** TCP keeps a TIME_WAIT (60 s, and its local port with it) on the side that sent
///   the first FIN. When the client ends first, the proxy passes its FIN on, so the proxy's upstream
///   socket keeps it: toward one upstream address, the ephemeral ports (about 28,000) then bound
///   a steady rate of such connections to about 470 a second (Linux reuses them at once only on
///   loopback, or with `net.ipv4.tcp_tw_reuse = 1`). Where the client's end means it is done (it
///   has read every answer), ``UpstreamEnding/reset`` ends the upstream connection with a reset
///   instead: no TIME_WAIT on the proxy (docs/operating.md).
///
/// Needs ``ServerConfiguration/maxOutboundConnections`` (one per proxied connection).
public struct TCPProxy: ConnectionHandler {
    /// How the upstream connection ends when the client ends its side first.
    public enum UpstreamEnding: Sendable, Hashable {
        /// The client's FIN goes on as a FIN (a half-close: the upstream may still answer, and its
        /// answer reaches the client), and the pair closes once both directions are done. The
        /// proxy's upstream socket keeps the TIME_WAIT.
        case halfClose
        /// The client's FIN means it is done: once nothing of the client's waits to go upstream,
        /// the upstream connection is reset (`SO_LINGER` 0), and the client side closes after what
        /// is queued for it. No TIME_WAIT on the proxy; the upstream sees a reset instead of an end
        /// of stream, and an answer it had not sent yet is lost. For protocols whose clients close
        /// only after reading every answer (HTTP/1.x keep-alive, Redis, memcached), never for one
        /// whose clients half-close to end a request (`nc -N`). Where something of the client's
        /// still waits, that pair half-closes as usual.
        case reset
    }

    /// Where connections go.
    public let upstream: SocketAddress
    /// How long an upstream connect may take.
    public let connectTimeout: Duration
    /// How the upstream connection ends when the client ends first.
    public let upstreamEnding: UpstreamEnding
    /// The other side of each connection, by session index.
    var peer: [ConnectionID?] = []
    /// Whether a side's FIN waits for its held bytes to reach the other side before it is passed
    /// on, by session index.
    var finPending: [Bool] = []
    /// Whether an upstream connection was reset because its client ended (``UpstreamEnding/reset``),
    /// by session index: its end then closes the client cleanly.
    var resetByClient: [Bool] = []

    /// A proxy to `upstream`.
    /// - Parameters:
    ///   - upstream: where each accepted connection is connected to.
    ///   - connectTimeout: how long an upstream connect may take.
    /// False: a side's receiving pauses for what it holds, not for its own output (which is the
    /// other side's input): see ``ConnectionHandler/pausesReceivingForQueuedOutput``.
    public static var pausesReceivingForQueuedOutput: Bool { false }

    /// - Parameters:
    ///   - upstream: where each accepted connection is connected to.
    ///   - connectTimeout: how long an upstream connect may take.
    ///   - upstreamEnding: how the upstream connection ends when the client ends first.
    public init(upstream: SocketAddress, connectTimeout: Duration = .seconds(5), upstreamEnding: UpstreamEnding = .halfClose) {
        self.upstream = upstream
        self.connectTimeout = connectTimeout
        self.upstreamEnding = upstreamEnding
    }

    public mutating func start(capacity: Int) {
        peer = Array(repeating: nil, count: capacity)
        finPending = Array(repeating: false, count: capacity)
        resetByClient = Array(repeating: false, count: capacity)
    }

    public mutating func opened(_ connection: Connection) {
        let ring = connection.ring
        finPending[connection.index] = false
        resetByClient[connection.index] = false
        if connection.isOutbound {
            // The upstream connected: the client's bytes may flow.
            if let client = peer[connection.index] { ring.resumeReceiving(client) }
            return
        }
        peer[connection.index] = nil
        switch ring.connect(to: upstream, timeout: connectTimeout) {
        case .success(let up):
            peer[connection.index] = up
            peer[up.index] = connection.id
            finPending[up.index] = false
            ring.pauseReceiving(connection.id)
        case .failure:
            connection.close()
        }
    }

    public mutating func received(_ bytes: UnsafeMutableRawBufferPointer, connection: Connection) -> Reply {
        guard let other = peer[connection.index] else { return .nothing }  // its pair is gone: closing
        let ring = connection.ring
        if ring.hasHeldBytes(connection.id) {
            // Bytes already wait for the other side: these go behind them.
            connection.holdReceived()
            return .nothing
        }
        switch ring.write(UnsafeRawBufferPointer(bytes), to: other) {
        case .queued:
            break
        case .full:
            connection.holdReceived()
            ring.requestWritable(other)
        case .closed:
            connection.close()
        }
        return .nothing
    }

    public mutating func writable(_ connection: Connection) {
        // The connection drained: what its peer holds goes on.
        guard let source = peer[connection.index] else { return }
        let ring = connection.ring
        let target = connection.id
        var blocked = false
        ring.drainHeld(source) { bytes in
            switch ring.write(bytes, to: target) {
            case .queued: return true
            case .full:
                blocked = true
                return false
            case .closed: return false
            }
        }
        if blocked {
            ring.requestWritable(target)
        } else if finPending[source.index] && !ring.hasHeldBytes(source) {
            finPending[source.index] = false
            ring.shutdownOutput(target)
        }
    }

    public mutating func inputEnded(_ connection: Connection) {
        guard let other = peer[connection.index] else {
            connection.close()
            return
        }
        let ring = connection.ring
        if ring.hasHeldBytes(connection.id) {
            finPending[connection.index] = true  // passed on once its held bytes are
        } else if upstreamEnding == .reset && !connection.isOutbound && ring.queuedBytes(other) == 0 {
            // The client is done and all it sent has gone upstream: a reset, no TIME_WAIT here.
            resetByClient[other.index] = true
            ring.abort(other)
        } else {
            ring.shutdownOutput(other)
        }
        // The connection stays open for the other side's bytes; it closes once its own output is
        // shut too (the other side's FIN) or the other side closes.
    }

    /// One side ended, cleanly: the other closes after what it has queued (a wrapper that forwards
    /// this older callback loses the abnormal ends, which ``closed(_:end:ring:)`` passes on).
    public mutating func closed(_ connection: ConnectionID, ring: RingContext) {
        closed(connection, end: .clean, ring: ring)
    }

    /// One side ended: the other closes after what it has queued, with a FIN, or, when the side
    /// ended abnormally (a reset, an error, an abort, stalled output, or bytes dropped with it), is
    /// aborted: its peer sees a reset rather than a clean end of stream with bytes missing. (What
    /// the proxy still holds for it is dropped with it: a reset discards the kernel's send queue
    /// too, so "what is queued, then a reset" could not promise more.)
    public mutating func closed(_ connection: ConnectionID, end: ConnectionEnd, ring: RingContext) {
        guard let other = peer[connection.index] else { return }
        peer[connection.index] = nil
        if peer[other.index] == connection { peer[other.index] = nil }
        let byClient = resetByClient[connection.index]
        resetByClient[connection.index] = false
        if end == .abnormal && !byClient { ring.abort(other) } else { ring.close(other) }
    }

    public mutating func connectFailed(_ connection: ConnectionID, _ failure: ConnectFailure, ring: RingContext) {
        guard let client = peer[connection.index] else { return }
        peer[connection.index] = nil
        if peer[client.index] == connection { peer[client.index] = nil }
        ring.close(client)
    }
}
