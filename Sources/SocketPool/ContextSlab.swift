/// One request in flight: the io_uring analog of the IOCP `OVERLAPPED` extended with a session
/// pointer (`OverlappedEx`). It records what the completion handler needs to finish the operation.
@frozen
public struct RequestContext {
    /// The operation.
    public var kind: OperationKind
    /// The session the request belongs to (its index in the ``SessionPool``), or `UInt32.max`.
    public var session: UInt32
    /// The session's generation when the request was made, to detect a recycled session.
    public var sessionGeneration: UInt32
    /// Free for the owner: an accept's ``SlotLease/packed``, for example.
    public var user: UInt64

    /// An empty context.
    public init() {
        kind = OperationKind(rawValue: 0)
        session = .max
        sessionGeneration = 0
        user = 0
    }
}

/// Counters of a pool or slab.
public struct PoolStatistics: Sendable, Equatable, CustomStringConvertible {
    /// Fixed capacity.
    public var capacity: Int = 0
    /// Entries handed out and not yet returned.
    public var inUse: Int = 0
    /// The largest ``inUse`` seen.
    public var highWater: Int = 0
    /// Acquisitions served from the pool.
    public var hits: UInt64 = 0
    /// Acquisitions the pool could not serve (exhausted), or that fell back to a plain descriptor.
    public var misses: UInt64 = 0
    /// Completions dropped because their generation no longer matched.
    public var staleCompletions: UInt64 = 0

    /// All zero.
    public init() {}

    /// `capacity 8, in use 2 (high 5), hits 100, misses 0, stale 1`.
    public var description: String {
        "capacity \(capacity), in use \(inUse) (high \(highWater)), hits \(hits), misses \(misses), stale \(staleCompletions)"
    }
}

extension PoolStatistics {
    /// One more entry handed out from the pool.
    mutating func noteAcquire() {
        hits &+= 1
        noteInUse()
    }

    /// One more entry in use (from the pool or made anew).
    mutating func noteInUse() {
        inUse += 1
        if inUse > highWater { highWater = inUse }
    }
}

/// A fixed-capacity slab of ``RequestContext``s with O(1) acquire and release.
///
/// Contexts live at stable addresses in one allocation made at init; a LIFO free list hands out
/// the most recently released (cache-warm) one first. No ARC and no heap allocation per request.
/// Every acquisition returns a ``RequestTag`` to use as the request's `user_data`; ``resolve(_:)``
/// turns a completion's tag back into the context, or reports it stale.
///
/// Confined to the ring's thread: it is not `Sendable` and takes no locks.
public struct ContextSlab: ~Copyable {
    let contexts: UnsafeMutablePointer<RequestContext>
    var indices: GenerationalFreeList
    /// Counters.
    public var statistics: PoolStatistics { indices.statistics }

    /// Creates a slab of `capacity` contexts.
    /// - Parameters:
    ///   - capacity: the most requests in flight at once.
    ///   - initialGeneration: where generations start (tests start near the 24-bit limit).
    public init(capacity: Int, initialGeneration: UInt32 = 0) {
        indices = GenerationalFreeList(capacity: capacity, initialGeneration: initialGeneration)
        contexts = .allocate(capacity: capacity)
        contexts.initialize(repeating: RequestContext(), count: capacity)
    }

    deinit { contexts.deallocate() }

    /// Takes a free context, fills in its kind and session, and returns its tag.
    /// - Parameters:
    ///   - kind: the operation.
    ///   - session: the owning session's index.
    ///   - sessionGeneration: the owning session's generation.
    /// - Returns: the tag, or `nil` when every context is in flight (counted as a miss).
    public mutating func acquire(_ kind: OperationKind, session: UInt32 = .max, sessionGeneration: UInt32 = 0)
        -> RequestTag?
    {
        guard let (index, generation) = indices.acquire() else { return nil }
        let ctx = contexts + Int(index)
        ctx.pointee = RequestContext()
        ctx.pointee.kind = kind
        ctx.pointee.session = session
        ctx.pointee.sessionGeneration = sessionGeneration
        return RequestTag(index: index, generation: generation, kind: kind)
    }

    /// The context a completion's tag names, or `nil` if the tag is stale (its context was
    /// released, and perhaps handed to a new owner, since the request was made). Stale tags are
    /// counted in ``statistics``.
    /// - Parameter tag: the completion's `user_data`.
    /// - Returns: a pointer to the live context, valid until it is released.
    public mutating func resolve(_ tag: RequestTag) -> UnsafeMutablePointer<RequestContext>? {
        guard indices.isCurrent(tag.index, tag.generation), contexts[Int(tag.index)].kind == tag.kind else {
            indices.noteStale()
            return nil
        }
        return contexts + Int(tag.index)
    }

    /// The context behind a tag without the staleness check (for the code that just acquired it).
    /// - Parameter tag: a tag returned by ``acquire(_:session:sessionGeneration:)``.
    public func context(_ tag: RequestTag) -> UnsafeMutablePointer<RequestContext> {
        contexts + Int(tag.index)
    }

    /// Returns the context to the free list and moves its generation on, so any later completion
    /// still carrying `tag` resolves as stale.
    /// - Parameter tag: the tag the context was acquired with.
    /// - Returns: `false` (and changes nothing) if the tag is not the live incarnation: a double
    ///   release is refused rather than corrupting the free list.
    @discardableResult
    public mutating func release(_ tag: RequestTag) -> Bool {
        indices.release(tag.index, tag.generation)
    }

    /// Contexts currently free.
    public var available: Int { indices.freeCount }
}
