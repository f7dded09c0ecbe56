/// A fixed-capacity slab of request contexts with O(1) acquire and release: the io_uring analog of
/// the IOCP `OVERLAPPED` extended with what the completion handler needs (`OverlappedEx`).
///
/// Contexts live at stable addresses in one allocation made at init; a LIFO free list hands out
/// the most recently released (cache-warm) one first. No ARC and no heap allocation per request.
/// Every acquisition returns a ``RequestTag`` to use as the request's `user_data`; ``resolve(_:)``
/// turns a completion's tag back into the context, or reports it stale.
///
/// Confined to the ring's thread: it is not `Sendable` and takes no locks.
public struct ContextSlab<Context>: ~Copyable {
    @usableFromInline let contexts: UnsafeMutablePointer<Context>
    /// The kind each context was acquired for: a tag naming another kind does not resolve.
    @usableFromInline let kinds: UnsafeMutablePointer<UInt8>
    @usableFromInline var indices: GenerationalFreeList
    /// Counters.
    public var statistics: PoolStatistics { indices.statistics }

    /// Creates a slab of `capacity` contexts, each set to `empty`.
    /// - Parameters:
    ///   - capacity: the most requests in flight at once.
    ///   - empty: the value of a free context.
    ///   - initialGeneration: where generations start (tests start near the 24-bit limit).
    public init(capacity: Int, empty: Context, initialGeneration: UInt32 = 0) {
        indices = GenerationalFreeList(capacity: capacity, initialGeneration: initialGeneration)
        contexts = .allocate(capacity: capacity)
        contexts.initialize(repeating: empty, count: capacity)
        kinds = .allocate(capacity: capacity)
        kinds.initialize(repeating: 0, count: capacity)
    }

    deinit {
        contexts.deinitialize(count: indices.capacity)
        contexts.deallocate()
        kinds.deallocate()
        indices.deallocate()
    }

    /// Takes a free context, stores `context` in it, and returns its tag.
    /// - Parameters:
    ///   - kind: the operation (the tag's kind byte).
    ///   - context: what the completion will need.
    /// - Returns: the tag, or `nil` when every context is in flight (counted as a miss).
    @inlinable
    public mutating func acquire(kind: UInt8, _ context: Context) -> RequestTag? {
        guard let lease = indices.acquire() else { return nil }
        contexts[Int(lease.index)] = context
        kinds[Int(lease.index)] = kind
        return RequestTag(lease, kind: kind)
    }

    /// The context a completion's tag names, or `nil` if the tag is stale (its context was
    /// released, and perhaps handed to a new owner, since the request was made). Stale tags are
    /// counted in ``statistics``.
    /// - Parameter tag: the completion's `user_data`.
    /// - Returns: a pointer to the live context, valid until it is released.
    @inlinable
    public mutating func resolve(_ tag: RequestTag) -> UnsafeMutablePointer<Context>? {
        let lease = tag.lease
        guard indices.isCurrent(lease), kinds[Int(lease.index)] == tag.kind else {
            indices.noteStale()
            return nil
        }
        return contexts + Int(lease.index)
    }

    /// Returns the context to the free list and moves its generation on, so any later completion
    /// still carrying `tag` resolves as stale.
    /// - Parameter tag: the tag the context was acquired with.
    /// - Returns: `false` (and changes nothing) if the tag is not the live incarnation: a double
    ///   release is refused rather than corrupting the free list.
    @inlinable
    @discardableResult
    public mutating func release(_ tag: RequestTag) -> Bool {
        indices.release(tag.lease)
    }

    /// Contexts currently free.
    package var available: Int { indices.freeCount }
}
