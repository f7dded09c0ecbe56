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
///   in the kernel). An upstream that refuses or times out closes the client at once; a side that
///   resets or closes closes the other (after its queued output).
///
/// Needs ``ServerConfiguration/maxOutboundConnections`` (one per proxied connection).
public struct TCPProxy: ConnectionHandler {
    /// Where connections go.
    public let upstream: SocketAddress
    /// How long an upstream connect may take.
    public let connectTimeout: Duration
    /// The other side of each connection, by session index.
    var peer: [ConnectionID?] = []
    /// Whether a side's FIN waits for its held bytes to reach the other side before it is passed
    /// on, by session index.
    var finPending: [Bool] = []

    /// A proxy to `upstream`.
    /// - Parameters:
    ///   - upstream: where each accepted connection is connected to.
    ///   - connectTimeout: how long an upstream connect may take.
    /// False: a side's receiving pauses for what it holds, not for its own output (which is the
    /// other side's input): see ``ConnectionHandler/pausesReceivingForQueuedOutput``.
    public static var pausesReceivingForQueuedOutput: Bool { false }

    public init(upstream: SocketAddress, connectTimeout: Duration = .seconds(5)) {
        self.upstream = upstream
        self.connectTimeout = connectTimeout
    }

    public mutating func start(capacity: Int) {
        peer = Array(repeating: nil, count: capacity)
        finPending = Array(repeating: false, count: capacity)
    }

    public mutating func opened(_ connection: Connection) {
        let ring = connection.ring
        finPending[connection.index] = false
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
        if connection.ring.hasHeldBytes(connection.id) {
            finPending[connection.index] = true  // passed on once its held bytes are
        } else {
            connection.ring.shutdownOutput(other)
        }
        // The connection stays open for the other side's bytes; it closes once its own output is
        // shut too (the other side's FIN) or the other side closes.
    }

    public mutating func closed(_ connection: ConnectionID, ring: RingContext) {
        guard let other = peer[connection.index] else { return }
        peer[connection.index] = nil
        if peer[other.index] == connection { peer[other.index] = nil }
        ring.close(other)
    }

    public mutating func connectFailed(_ connection: ConnectionID, _ failure: ConnectFailure, ring: RingContext) {
        guard let client = peer[connection.index] else { return }
        peer[connection.index] = nil
        if peer[client.index] == connection { peer[client.index] = nil }
        ring.close(client)
    }
}
