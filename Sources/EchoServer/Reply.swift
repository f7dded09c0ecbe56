import SocketPool

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
