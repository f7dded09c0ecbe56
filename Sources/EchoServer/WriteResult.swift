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
