/// The mechanism every pool here shares: `capacity` indices, each with a generation, handed out
/// LIFO (the index freed last, still cache-warm, goes out first) and taken back once per lease.
/// Taking an index back moves its generation on, so anything still naming the old lease — a late
/// completion's tag, an old handle — no longer matches (``isCurrent(_:)``).
///
/// ``ContextSlab``, ``SlotPool`` and ``SessionPool`` put their own storage beside it, and free its
/// storage in their `deinit` (``deallocate()``): it is copyable, with no `deinit` of its own, so the
/// pools' inlinable code can mutate it (a non-copyable field with a `deinit` cannot be, across
/// modules).
@usableFromInline
struct GenerationalFreeList {
    @usableFromInline let generations: UnsafeMutablePointer<UInt32>
    @usableFromInline let leased: UnsafeMutablePointer<Bool>
    @usableFromInline let freeList: UnsafeMutablePointer<UInt32>
    /// Where each free index sits in ``freeList``, so ``claim(_:)`` takes one out in O(1).
    @usableFromInline let position: UnsafeMutablePointer<UInt32>
    @usableFromInline var freeCount: Int
    @usableFromInline let capacity: Int
    @usableFromInline var statistics = PoolStatistics()

    @usableFromInline
    init(capacity: Int, initialGeneration: UInt32 = 0) {
        precondition(capacity > 0 && capacity <= Int(UInt32.max), "capacity out of range")
        self.capacity = capacity
        generations = .allocate(capacity: capacity)
        generations.initialize(repeating: initialGeneration & Lease.generationMask, count: capacity)
        leased = .allocate(capacity: capacity)
        leased.initialize(repeating: false, count: capacity)
        freeList = .allocate(capacity: capacity)
        position = .allocate(capacity: capacity)
        // Pushed in reverse so index 0 is handed out first.
        for i in 0..<capacity {
            freeList[i] = UInt32(capacity - 1 - i)
            position[capacity - 1 - i] = UInt32(i)
        }
        freeCount = capacity
        statistics.capacity = capacity
    }

    /// Frees the storage: once, from the owning pool's `deinit`.
    @usableFromInline
    func deallocate() {
        generations.deallocate()
        leased.deallocate()
        freeList.deallocate()
        position.deallocate()
    }

    /// Leases the index freed last; `nil` (counted as a miss) when all are leased.
    @inlinable
    mutating func acquire() -> Lease? {
        if freeCount == 0 {
            statistics.misses &+= 1
            return nil
        }
        freeCount -= 1
        let index = freeList[freeCount]
        leased[Int(index)] = true
        statistics.noteAcquire()
        return Lease(index: index, generation: generations[Int(index)])
    }

    /// Leases `index`, chosen by someone else (the kernel allocating a fixed-file slot); `nil` when
    /// it is out of range or already leased.
    @usableFromInline
    mutating func claim(_ index: UInt32) -> Lease? {
        let i = Int(index)
        guard i < capacity, !leased[i] else { return nil }
        let at = Int(position[i])
        let last = freeList[freeCount - 1]
        freeList[at] = last
        position[Int(last)] = UInt32(at)
        freeCount -= 1
        leased[i] = true
        statistics.noteAcquire()
        return Lease(index: index, generation: generations[i])
    }

    /// Whether `lease` is the current lease of its index.
    @inlinable
    func isCurrent(_ lease: Lease) -> Bool {
        Int(lease.index) < capacity && leased[Int(lease.index)] && generations[Int(lease.index)] == lease.generation
    }

    /// Whether `index` is leased now.
    @inlinable
    func isLeased(_ index: Int) -> Bool { leased[index] }

    /// Takes a lease back and moves the index's generation on; `false` (nothing changed) when the
    /// lease is not current, so a double release cannot corrupt the free list.
    @inlinable
    mutating func release(_ lease: Lease) -> Bool {
        guard isCurrent(lease) else { return false }
        let i = Int(lease.index)
        leased[i] = false
        generations[i] = Lease.nextGeneration(after: generations[i])
        freeList[freeCount] = lease.index
        position[i] = UInt32(freeCount)
        freeCount += 1
        statistics.inUse -= 1
        return true
    }

    @inlinable
    mutating func noteStale() { statistics.staleCompletions &+= 1 }
}
