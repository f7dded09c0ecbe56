import URing

/// What a ``SessionPool`` owns of one session: its place in the pool and the lease of that place,
/// which session over the pool's life it is, its socket, and its buffer. Fixed for the session's
/// life; the rest of what the owner knows of it is the owner's ``SessionRecord``.
@frozen
public struct PooledSession {
    /// The session's place in the pool and the generation of this lease of it: a completion or
    /// handle that names an older lease is refused (``SessionPool/resolve(_:)``).
    public let lease: Lease
    /// Which session this is over the pool's whole life: 64 bits, never repeats (unlike the lease's
    /// generation, which wraps after 2^24 reuses of one place).
    public let epoch: UInt64
    /// The socket: a fixed slot (pooled) or a plain descriptor.
    public let file: FileRef
    /// The slot's own lease when ``file`` is a fixed slot, to give back to the ``SlotPool``.
    public let slot: Lease?
    /// The session's buffer (empty when the pool was made without one).
    public let buffer: UnsafeMutableRawBufferPointer

    /// The session's place in the pool, `0..<capacity`.
    @inlinable public var index: Int { Int(lease.index) }

    /// A session value (the pool makes them).
    @inlinable
    init(lease: Lease, epoch: UInt64, file: FileRef, slot: Lease?, buffer: UnsafeMutableRawBufferPointer) {
        self.lease = lease
        self.epoch = epoch
        self.file = file
        self.slot = slot
        self.buffer = buffer
    }
}
