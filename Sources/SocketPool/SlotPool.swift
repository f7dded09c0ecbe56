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

    /// `slot 3.g7`.
    public var description: String { "slot \(index).g\(generation)" }
}

/// What to do when every slot is taken.
public enum SlotExhaustionPolicy: Sendable, Hashable {
    /// Accept into a plain descriptor instead, as the original IOCP design created a new socket
    /// when its pool was empty. The connection is served; it just lives outside the table.
    case fallbackToDescriptor
    /// Stop accepting until a slot is released; waiting clients stay in the listen backlog.
    case backpressure
}

/// Where the next accept should put its socket, as decided by ``SlotPool/nextAcceptTarget()``.
public enum AcceptDecision: Hashable, Sendable {
    /// Into this leased slot.
    case slot(SlotLease)
    /// Into a plain descriptor (pool exhausted, ``SlotExhaustionPolicy/fallbackToDescriptor``).
    case descriptor
    /// Do not accept now (pool exhausted, ``SlotExhaustionPolicy/backpressure``).
    case pause
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
    var pausedEpisode = false
    /// Number of slots.
    public let capacity: UInt32
    /// What ``nextAcceptTarget()`` does when no slot is free.
    public let policy: SlotExhaustionPolicy
    /// Counters: `misses` counts acquisitions that found the pool empty (each one either fell back
    /// to a descriptor or paused accepting).
    public var statistics: PoolStatistics { indices.statistics }
    /// Times accepting was paused for want of a slot (one per exhaustion episode).
    public private(set) var pauseEpisodes: UInt64 = 0
    /// Accepts that went to a plain descriptor because the pool was empty.
    public private(set) var fallbacks: UInt64 = 0

    /// Registers a sparse file table of `capacity` slots with `ring` and makes them all free.
    /// - Parameters:
    ///   - ring: the ring whose file table this pool manages.
    ///   - capacity: number of slots.
    ///   - policy: what to do when all are taken.
    /// - Throws: `URingError` from `io_uring_register_files_sparse`.
    public init(ring: borrowing Ring, capacity: UInt32, policy: SlotExhaustionPolicy = .backpressure)
        throws(URingError)
    {
        precondition(capacity > 0, "a slot pool needs at least one slot")
        try ring.registerFiles(sparse: capacity)
        self.capacity = capacity
        self.policy = policy
        indices = GenerationalFreeList(capacity: Int(capacity))
    }

    /// Leases the most recently released free slot.
    /// - Returns: the lease, or `nil` when every slot is leased (counted as a miss).
    public mutating func acquire() -> SlotLease? {
        guard let (index, generation) = indices.acquire() else { return nil }
        pausedEpisode = false
        return SlotLease(index: index, generation: generation)
    }

    /// Decides where the next accept goes, applying the exhaustion policy.
    /// - Returns: a leased slot; or, when none is free, `.descriptor` or `.pause` per ``policy``.
    public mutating func nextAcceptTarget() -> AcceptDecision {
        if let lease = acquire() { return .slot(lease) }
        switch policy {
        case .fallbackToDescriptor:
            fallbacks &+= 1
            return .descriptor
        case .backpressure:
            if !pausedEpisode {
                pausedEpisode = true
                pauseEpisodes &+= 1
            }
            return .pause
        }
    }

    /// Returns a slot after its `close_direct` completed; its generation moves on.
    /// - Parameter lease: the lease from ``acquire()``.
    /// - Returns: `false` (and changes nothing) for a lease that is not current: a double release.
    @discardableResult
    public mutating func release(_ lease: SlotLease) -> Bool {
        indices.release(lease.index, lease.generation)
    }

    /// Adopts a slot the kernel chose (`AcceptTarget.anySlot`), so the pool's books match the
    /// table. The slot must be free in the pool.
    /// - Parameter index: the slot the accept completion returned.
    /// - Returns: its lease, or `nil` if the pool already had it leased (a bookkeeping error).
    public mutating func adopt(_ index: UInt32) -> SlotLease? {
        guard let generation = indices.take(index) else { return nil }
        pausedEpisode = false
        return SlotLease(index: index, generation: generation)
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
