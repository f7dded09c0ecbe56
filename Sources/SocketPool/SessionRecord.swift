import URing

/// The record a ``SessionPool`` keeps for each session, at a stable address: whatever its owner
/// (a completion loop) knows of a connection, beside the ``PooledSession`` the pool made it for.
public protocol SessionRecord {
    /// The record of a session just handed out.
    /// - Parameter session: the pool's part.
    init(_ session: PooledSession)
    /// The pool's part, as given to ``init(_:)``.
    var session: PooledSession { get }
}
