import URing

/// A pool over the ring's registered (sparse) file table: the io_uring form of the IOCP socket
/// pool.
///
/// `init` registers an empty table of `capacity` slots. ``acquire()`` leases a free slot, LIFO, so
/// the slot freed last (its kernel structures still warm) is used first; an accept goes straight
/// into it (`AcceptTarget.slot(_:)`). ``release(_:)`` returns it, and must only be called once the
/// slot's `close_direct` has completed — a slot handed out again before then would race with the
/// pending close. Each lease has a generation, so a completion that names a released lease is
/// recognised as stale.
///
/// A tail of the table may be reserved (``acquireReserved()``): the kernel is told to choose only
/// below it (`IORING_REGISTER_FILE_ALLOC_RANGE`), so slots the caller names itself (an outbound
/// socket made into a slot, linked to its connect) never meet slots the kernel picks (a direct
/// multishot accept).
///
/// Confined to the ring's thread: not `Sendable`, no locks.
public struct SlotPool: ~Copyable {
    var indices: GenerationalFreeList
    /// The reserved tail, `reservedBase..<capacity` (its own indices from 0).
    var reserved: GenerationalFreeList
    /// Number of slots.
    package let capacity: UInt32
    /// The first reserved slot (`capacity` when none is).
    package let reservedBase: UInt32
    /// Counters, over both parts: `misses` counts acquisitions that found the pool empty.
    public var statistics: PoolStatistics {
        var s = indices.statistics
        guard reservedBase < capacity else { return s }
        let r = reserved.statistics
        s.capacity += r.capacity
        s.inUse += r.inUse
        s.highWater += r.highWater
        s.hits += r.hits
        s.misses += r.misses
        s.staleCompletions += r.staleCompletions
        return s
    }

    /// Registers a sparse file table of `capacity` slots with `ring` and makes them all free.
    /// - Parameters:
    ///   - ring: the ring whose file table this pool manages.
    ///   - capacity: number of slots.
    ///   - reserved: slots at the end of the table for ``acquireReserved()``, kept out of the
    ///     kernel's choice (0: none).
    /// - Throws: `URingError` from `io_uring_register_files_sparse` (`EINVAL` for 0 slots).
    public init(ring: borrowing Ring, capacity: UInt32, reserved: UInt32 = 0) throws(URingError) {
        guard capacity > 0, reserved < capacity else {
            throw URingError("io_uring_register_files_sparse", errno: .invalidArgument)
        }
        try ring.registerFiles(sparse: capacity)
        if reserved > 0 {
            do {
                try ring.registerFileAllocRange(offset: 0, count: capacity - reserved)
            } catch {
                try? ring.unregisterFiles()  // the caller may try again without a reserved tail
                throw error
            }
        }
        self.capacity = capacity
        reservedBase = capacity - reserved
        indices = GenerationalFreeList(capacity: Int(capacity - reserved))
        self.reserved = GenerationalFreeList(capacity: Int(max(reserved, 1)))
    }

    deinit {
        indices.deallocate()
        reserved.deallocate()
    }

    /// Leases a free slot of the reserved tail, which the kernel never picks itself.
    /// - Returns: the lease, or `nil` when none is free (or none is reserved).
    public mutating func acquireReserved() -> Lease? {
        guard reservedBase < capacity, let lease = reserved.acquire() else { return nil }
        return Lease(index: lease.index + reservedBase, generation: lease.generation)
    }

    /// Leases the most recently released free slot.
    /// - Returns: the lease, or `nil` when every slot is leased (counted as a miss).
    public mutating func acquire() -> Lease? { indices.acquire() }

    /// Leases the slot the kernel chose (a direct accept into `IORING_FILE_INDEX_ALLOC`).
    /// - Parameter index: the slot the completion named.
    /// - Returns: the lease, or `nil` when `index` is out of range or already leased.
    public mutating func claim(_ index: UInt32) -> Lease? { indices.claim(index) }

    /// Returns a slot after its `close_direct` completed; its generation moves on.
    /// - Parameter lease: the lease from ``acquire()``.
    /// - Returns: `false` (and changes nothing) for a lease that is not current: a double release.
    @discardableResult
    public mutating func release(_ lease: Lease) -> Bool {
        guard lease.index >= reservedBase else { return indices.release(lease) }
        return reserved.release(Lease(index: lease.index - reservedBase, generation: lease.generation))
    }

    /// Whether `lease` is still the slot's current lease.
    /// - Parameter lease: a lease.
    package func isCurrent(_ lease: Lease) -> Bool {
        guard lease.index >= reservedBase else { return indices.isCurrent(lease) }
        return reserved.isCurrent(Lease(index: lease.index - reservedBase, generation: lease.generation))
    }

    /// The lease a completion's tag names, or `nil` (counted) if that lease has been released since.
    /// - Parameter tag: a tag made from a lease of this pool.
    package mutating func resolve(_ tag: RequestTag) -> Lease? {
        if isCurrent(tag.lease) { return tag.lease }
        indices.noteStale()
        return nil
    }

    /// Slots currently free.
    public var available: Int { indices.freeCount }
}
