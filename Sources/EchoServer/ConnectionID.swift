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
