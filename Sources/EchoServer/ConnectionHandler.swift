import SocketPool

/// Identifies one connection of one ring for the life of the connection (its session index and
/// generation). A stale ID — one whose connection has closed, even if a new connection now uses
/// the same index — is refused by every call that takes one.
@frozen
public struct ConnectionID: Hashable, Sendable, CustomStringConvertible {
    /// The ring (thread) the connection belongs to: an ID is only valid on its own ring.
    public let ring: Int
    /// Index in the ring's session pool, below ``ConnectionHandler/start(capacity:)``'s capacity:
    /// usable as an index into per-connection state the handler keeps.
    public let index: Int
    /// Distinguishes successive connections that reuse one index; never repeats on its ring.
    public let generation: UInt64

    /// An ID from its parts (as read back from ``ring``, ``index`` and ``generation``).
    /// - Parameters:
    ///   - ring: the ring index.
    ///   - index: the session index.
    ///   - generation: the session generation.
    @inlinable
    public init(ring: Int, index: Int, generation: UInt64) {
        self.ring = ring
        self.index = index
        self.generation = generation
    }

    /// `conn 1/3.g7` (ring 1, index 3, generation 7).
    public var description: String { "conn \(ring)/\(index).g\(generation)" }
}

/// What to do with the bytes a handler has just processed in place.
@frozen
public struct Reply: Hashable, Sendable {
    /// Bytes at the front of the received buffer to send back (clamped to the bytes received).
    public var count: Int
    /// Close the connection once everything queued is sent.
    public var close: Bool

    /// A reply.
    /// - Parameters:
    ///   - count: bytes at the front of the buffer to send.
    ///   - close: whether to close after sending them.
    @inlinable
    public init(count: Int, close: Bool) {
        self.count = count
        self.close = close
    }

    /// Send the first `count` bytes of the (possibly rewritten) buffer.
    /// - Parameter count: bytes to send, at most the buffer's size.
    @inlinable public static func send(_ count: Int) -> Reply { Reply(count: count, close: false) }
    /// Send the first `count` bytes, then close.
    /// - Parameter count: bytes to send.
    @inlinable public static func sendThenClose(_ count: Int) -> Reply { Reply(count: count, close: true) }
    /// Send nothing in place and close (after anything written is sent).
    public static let close = Reply(count: 0, close: true)
    /// Send nothing in place.
    public static let nothing = Reply(count: 0, close: false)
}

/// A message posted by a handler on another ring of the same server (``RingContext/post(_:value:toRing:)``),
/// the `PostQueuedCompletionStatus` of this design.
public struct RingMessage {
    /// The ring that posted it.
    public let from: Int
    /// A 64-bit value of the sender's choosing.
    public let value: UInt64
    /// The bytes posted, valid only during the call.
    public let bytes: UnsafeRawBufferPointer
}

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
    /// A connection was accepted. Write a greeting here, if the protocol has one.
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
    /// A connection ended (after its close completed); its ID is stale from now on.
    /// - Parameter connection: its identity.
    mutating func closed(_ connection: ConnectionID)
    /// Another ring of the server posted a message to this one.
    /// - Parameters:
    ///   - message: what was posted.
    ///   - ring: this ring, to write to its connections.
    mutating func received(message: RingMessage, ring: RingContext)
}

extension ConnectionHandler {
    /// Does nothing.
    public mutating func start(capacity: Int) {}
    /// Does nothing.
    public mutating func opened(_ connection: Connection) {}
    /// Does nothing.
    public mutating func writable(_ connection: Connection) {}
    /// Does nothing.
    public mutating func closed(_ connection: ConnectionID) {}
    /// Does nothing.
    public mutating func received(message: RingMessage, ring: RingContext) {}
}

/// Sends every byte back unchanged, without copying it.
public struct EchoHandler: ConnectionHandler {
    /// An echo handler.
    public init() {}

    /// Echoes all of `bytes`.
    @inlinable
    public mutating func received(_ bytes: UnsafeMutableRawBufferPointer, connection: Connection) -> Reply {
        .send(bytes.count)
    }
}
