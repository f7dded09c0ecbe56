import URing

/// A slot of the registered file table, leased from a ``SlotPool``: the index the socket lives at
/// and the generation of this lease.
@frozen
public struct SlotLease: Hashable, Sendable, CustomStringConvertible {
    /// The slot index in the ring's file table.
    public let index: UInt32
    /// Which lease of that slot this is.
    public let generation: UInt32

    /// Creates a lease value.
    /// - Parameters:
    ///   - index: the slot.
    ///   - generation: the lease's generation.
    public init(index: UInt32, generation: UInt32) {
        self.index = index
        self.generation = generation
    }

    /// The slot as a request target.
    public var file: FileRef { .slot(index) }

    /// The lease in one 64-bit word (index in the high half, generation in the low), to ride in a
    /// request context's `user` field.
    @inlinable public var packed: UInt64 { UInt64(index) << 32 | UInt64(generation) }

    /// Unpacks a lease from ``packed``.
    /// - Parameter packed: a value made by ``packed``.
    @inlinable
    public init(packed: UInt64) {
        self.init(index: UInt32(truncatingIfNeeded: packed >> 32), generation: UInt32(truncatingIfNeeded: packed))
    }

    /// `slot 3.g7`.
    public var description: String { "slot \(index).g\(generation)" }
}

/// A pool over the ring's registered (sparse) file table: the io_uring form of the IOCP socket
/// pool.
///
/// `init` registers an empty table of `capacity` slots. ``acquire()`` leases a free slot, LIFO, so
/// the slot freed last (its kernel structures still warm) is used first; an accept goes straight
/// into it (`AcceptTarget.slot(_:)`). ``release(_:)`` returns it, and must only be called once the
/// slot's `close_direct` has completed — a slot handed out again before then would race with the
/// pending close. Each lease has a generation, so a completion that names a released lease is
/// recognised as stale (``resolve(_:)``).
///
/// Confined to the ring's thread: not `Sendable`, no locks.
public struct SlotPool: ~Copyable {
    var indices: GenerationalFreeList
    /// Number of slots.
    public let capacity: UInt32
    /// Counters: `misses` counts acquisitions that found the pool empty.
    public var statistics: PoolStatistics { indices.statistics }

    /// Registers a sparse file table of `capacity` slots with `ring` and makes them all free.
    /// - Parameters:
    ///   - ring: the ring whose file table this pool manages.
    ///   - capacity: number of slots.
    /// - Throws: `URingError` from `io_uring_register_files_sparse` (`EINVAL` for 0 slots).
    public init(ring: borrowing Ring, capacity: UInt32) throws(URingError) {
        guard capacity > 0 else { throw URingError("io_uring_register_files_sparse", errno: .invalidArgument) }
        try ring.registerFiles(sparse: capacity)
        self.capacity = capacity
        indices = GenerationalFreeList(capacity: Int(capacity))
    }

    /// Leases the most recently released free slot.
    /// - Returns: the lease, or `nil` when every slot is leased (counted as a miss).
    public mutating func acquire() -> SlotLease? {
        guard let (index, generation) = indices.acquire() else { return nil }
        return SlotLease(index: index, generation: generation)
    }

    /// Leases the slot the kernel chose (a direct accept into `IORING_FILE_INDEX_ALLOC`).
    /// - Parameter index: the slot the completion named.
    /// - Returns: the lease, or `nil` when `index` is out of range or already leased.
    public mutating func claim(_ index: UInt32) -> SlotLease? {
        indices.claim(index).map { SlotLease(index: index, generation: $0) }
    }

    /// Returns a slot after its `close_direct` completed; its generation moves on.
    /// - Parameter lease: the lease from ``acquire()``.
    /// - Returns: `false` (and changes nothing) for a lease that is not current: a double release.
    @discardableResult
    public mutating func release(_ lease: SlotLease) -> Bool {
        indices.release(lease.index, lease.generation)
    }

    /// The tag for a request on `lease`'s slot.
    /// - Parameters:
    ///   - lease: the slot.
    ///   - kind: the operation.
    public func tag(for lease: SlotLease, _ kind: OperationKind) -> RequestTag {
        RequestTag(index: lease.index, generation: lease.generation, kind: kind)
    }

    /// Whether `lease` is still the slot's current lease.
    /// - Parameter lease: a lease.
    public func isCurrent(_ lease: SlotLease) -> Bool {
        indices.isCurrent(lease.index, lease.generation)
    }

    /// The lease a completion's tag names, or `nil` (counted) if that lease has been released since.
    /// - Parameter tag: a tag made by ``tag(for:_:)``.
    public mutating func resolve(_ tag: RequestTag) -> SlotLease? {
        let lease = SlotLease(index: tag.index, generation: tag.generation)
        if isCurrent(lease) { return lease }
        indices.noteStale()
        return nil
    }

    /// Slots currently free.
    public var available: Int { indices.freeCount }
}
