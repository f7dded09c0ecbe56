/// Identifies one connection of one ring for the life of the connection: its ring, its session
/// index, and its epoch. A stale ID — one whose connection has closed, even if a new connection
/// now uses the same index — is refused by every call that takes one.
@frozen
public struct ConnectionID: Hashable, Sendable, CustomStringConvertible {
    /// The ring (thread) the connection belongs to: an ID is only valid on its own ring.
    public let ring: Int
    /// Index in the ring's session pool, below ``ConnectionHandler/start(capacity:)``'s capacity:
    /// usable as an index into per-connection state the handler keeps.
    public let index: Int
    /// Which connection of its ring this is: 64 bits, counted up per connection, never repeats on
    /// its ring (unlike the 24-bit generation of a session's lease, which wraps).
    public let epoch: UInt64

    /// An ID from its parts (as read back from ``ring``, ``index`` and ``epoch``).
    /// - Parameters:
    ///   - ring: the ring index.
    ///   - index: the session index.
    ///   - epoch: the connection's epoch.
    @inlinable
    public init(ring: Int, index: Int, epoch: UInt64) {
        self.ring = ring
        self.index = index
        self.epoch = epoch
    }

    /// The connection's ``epoch``.
    @available(*, deprecated, renamed: "epoch")
    public var generation: UInt64 { epoch }

    /// An ID from its parts.
    @available(*, deprecated, renamed: "init(ring:index:epoch:)")
    public init(ring: Int, index: Int, generation: UInt64) { self.init(ring: ring, index: index, epoch: generation) }

    /// `conn 1/3#7` (ring 1, index 3, epoch 7).
    public var description: String { "conn \(ring)/\(index)#\(epoch)" }
}
