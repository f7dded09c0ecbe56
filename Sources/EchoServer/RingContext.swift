import SocketPool
import URing

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

    /// This ring, for any thread or task (``RingHandle``): to post to its handler or run a task
    /// on its thread later.
    public var handle: RingHandle { RingHandle(port: core.mailboxes.ports[core.ringIndex]) }

    /// A handle to `connection` for any thread or task (``ConnectionHandle``).
    /// - Parameter connection: a connection of this server (of this ring or another).
    public func handle(_ connection: ConnectionID) -> ConnectionHandle {
        // The ID's own ring: a handle made here for another ring's connection reaches it there.
        let ring = connection.ring >= 0 && connection.ring < core.mailboxes.count ? connection.ring : core.ringIndex
        return ConnectionHandle(port: core.mailboxes.ports[ring], id: connection)
    }

    /// Opens a connection to `address` from this ring: the `ConnectEx` of this design. In pooled
    /// mode its socket is made by the ring straight into a registered-file slot
    /// (``KernelFeatures/directSocket``), linked to its connect and the connect's timeout; otherwise
    /// it is a plain socket. The handler hears ``ConnectionHandler/opened(_:)`` once it connects (it
    /// is then like an accepted connection, ``Connection/isOutbound``), or
    /// ``ConnectionHandler/connectFailed(_:_:ring:)``. Bytes written to it before it connects are sent
    /// once it does.
    /// - Parameters:
    ///   - address: the peer.
    ///   - timeout: how long the connect may take.
    /// - Returns: the connection's ID at once, or ``ConnectFailure/capReached`` (or another failure
    ///   found before anything was posted).
    public func connect(to address: SocketAddress, timeout: Duration = .seconds(10)) -> Result<ConnectionID, ConnectFailure> {
        core.connect(to: address, timeout: timeout)
    }

    /// Whether `connection` holds received bytes not yet taken (``Connection/holdReceived()``).
    /// - Parameter connection: a connection of this ring; false for a stale ID.
    public func hasHeldBytes(_ connection: ConnectionID) -> Bool {
        guard let c = core.connection(connection) else { return false }
        return c.pointee.inbound.head >= 0 || c.pointee.inbound.current >= 0
    }

    /// Offers `connection`'s held bytes (``Connection/holdReceived()``) to `body`, oldest first, one
    /// receive buffer at a time: a chunk for which `body` returns true is taken (its buffer goes
    /// back, and receiving may resume); false stops, and that chunk stays held, first.
    /// - Parameters:
    ///   - connection: a connection of this ring; a stale ID has nothing held.
    ///   - body: takes a chunk (valid only during the call), or leaves it.
    public func drainHeld(_ connection: ConnectionID, _ body: (UnsafeRawBufferPointer) -> Bool) {
        guard let c = core.connection(connection) else { return }
        while true {
            let bytes: UnsafeRawBufferPointer
            let current = c.pointee.inbound.current
            if current >= 0 {
                bytes = UnsafeRawBufferPointer(
                    start: core.queue.base(current, c), count: Int(core.queue.length[Int(current)]))
            } else if let next = core.takeInbound(c) {
                bytes = next
            } else {
                return
            }
            guard body(bytes) else { return }
            core.releaseCurrent(c)
        }
    }

    /// Asks for ``ConnectionHandler/writable(_:)`` on `connection` once its queued output drains
    /// (``Connection/requestWritable()``).
    /// - Parameter connection: a connection of this ring; a stale ID is ignored.
    public func requestWritable(_ connection: ConnectionID) { core.requestWritable(connection) }

    /// Closes `connection` once its queued output is sent (no more receiving).
    /// - Parameter connection: a connection of this ring; a stale ID is ignored.
    public func close(_ connection: ConnectionID) { core.requestClose(connection, abort: false) }

    /// Shuts `connection`'s output once what is queued is sent, and goes on receiving
    /// (``Connection/shutdownOutput()``).
    /// - Parameter connection: a connection of this ring; a stale ID is ignored.
    public func shutdownOutput(_ connection: ConnectionID) { core.requestShutdown(connection) }

    /// Closes `connection` at once, dropping queued output; the peer gets a reset.
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
