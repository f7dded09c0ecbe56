/// Identifies one connection for the life of the connection (its session index and generation).
@frozen
public struct ConnectionID: Hashable, Sendable, CustomStringConvertible {
    /// Index in the ring's session pool, below ``ConnectionHandler/start(capacity:)``'s capacity:
    /// usable as an index into per-connection state the handler keeps.
    public let index: Int
    /// Distinguishes successive connections that reuse one index.
    public let generation: UInt32

    /// `conn 3.g7`.
    public var description: String { "conn \(index).g\(generation)" }
}

/// What to do with bytes a handler has processed.
@frozen
public struct Reply: Hashable, Sendable {
    /// Bytes at the front of the received buffer to send back.
    public var count: Int
    /// Close the connection once those bytes are sent.
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
    /// Send nothing and close.
    public static let close = Reply(count: 0, close: true)
    /// Send nothing now.
    public static let nothing = Reply(count: 0, close: false)
}

/// A byte-stream protocol served by the completion loop.
///
/// The loop calls it on its ring's thread only, one call at a time, so a handler needs no locks;
/// each ring thread gets its own instance. Calls are made straight from the completion dispatch
/// with no allocation: keep per-connection state in storage sized once in ``start(capacity:)`` and
/// indexed by ``ConnectionID/index``.
///
/// Bytes are processed in place: ``received(_:connection:)`` may rewrite the buffer and answers
/// with how many bytes at its front to send back. Echo returns them all untouched.
public protocol ConnectionHandler: SendableMetatype {
    /// Called once, before any connection, with the most connections this instance will see at once.
    /// - Parameter capacity: the session pool's capacity.
    mutating func start(capacity: Int)
    /// A connection was accepted.
    /// - Parameter connection: its identity.
    mutating func opened(_ connection: ConnectionID)
    /// Bytes arrived on `connection`.
    /// - Parameters:
    ///   - bytes: the received bytes, writable in place; valid only during the call.
    ///   - connection: where they came from.
    /// - Returns: how many bytes at the front of `bytes` to send, and whether to close after.
    mutating func received(_ bytes: UnsafeMutableRawBufferPointer, connection: ConnectionID) -> Reply
    /// A connection ended (after its close completed).
    /// - Parameter connection: its identity.
    mutating func closed(_ connection: ConnectionID)
}

extension ConnectionHandler {
    /// Does nothing.
    public mutating func start(capacity: Int) {}
    /// Does nothing.
    public mutating func opened(_ connection: ConnectionID) {}
    /// Does nothing.
    public mutating func closed(_ connection: ConnectionID) {}
}

/// Sends every byte back unchanged, without copying it.
public struct EchoHandler: ConnectionHandler {
    /// An echo handler.
    public init() {}

    /// Echoes all of `bytes`.
    @inlinable
    public mutating func received(_ bytes: UnsafeMutableRawBufferPointer, connection: ConnectionID) -> Reply {
        .send(bytes.count)
    }
}
