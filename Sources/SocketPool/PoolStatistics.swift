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
    /// Completions (or leases) refused because their generation no longer matched.
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
    @inlinable
    mutating func noteAcquire() {
        hits &+= 1
        noteInUse()
    }

    /// One more entry in use (from the pool or made anew).
    @inlinable
    mutating func noteInUse() {
        inUse += 1
        if inUse > highWater { highWater = inUse }
    }
}
