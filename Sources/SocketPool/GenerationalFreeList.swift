/// The mechanism every pool here shares: `capacity` indices, each with a generation, handed out
/// LIFO (the index freed last, still cache-warm, goes out first) and taken back once per lease.
/// Taking an index back moves its generation on, so anything still naming the old lease — a late
/// completion's tag, an old handle — no longer matches (``isCurrent(_:_:)``).
///
/// ``ContextSlab``, ``SlotPool`` and ``SessionPool`` put their own storage beside it.
struct GenerationalFreeList: ~Copyable {
    let generations: UnsafeMutablePointer<UInt32>
    let leased: UnsafeMutablePointer<Bool>
    let freeList: UnsafeMutablePointer<UInt32>
    /// Where each free index sits in ``freeList``, so ``claim(_:)`` takes one out in O(1).
    let position: UnsafeMutablePointer<UInt32>
    var freeCount: Int
    let capacity: Int
    var statistics = PoolStatistics()

    init(capacity: Int, initialGeneration: UInt32 = 0) {
        precondition(capacity > 0 && capacity <= Int(UInt32.max), "capacity out of range")
        self.capacity = capacity
        generations = .allocate(capacity: capacity)
        generations.initialize(repeating: initialGeneration & RequestTag.generationMask, count: capacity)
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

    deinit {
        generations.deallocate()
        leased.deallocate()
        freeList.deallocate()
        position.deallocate()
    }

    /// Leases the index freed last; `nil` (counted as a miss) when all are leased.
    mutating func acquire() -> (index: UInt32, generation: UInt32)? {
        if freeCount == 0 {
            statistics.misses &+= 1
            return nil
        }
        freeCount -= 1
        let index = freeList[freeCount]
        leased[Int(index)] = true
        statistics.noteAcquire()
        return (index, generations[Int(index)])
    }

    /// Leases `index`, chosen by someone else (the kernel allocating a fixed-file slot); `nil` when
    /// it is out of range or already leased.
    mutating func claim(_ index: UInt32) -> UInt32? {
        let i = Int(index)
        guard i < capacity, !leased[i] else { return nil }
        let at = Int(position[i])
        let last = freeList[freeCount - 1]
        freeList[at] = last
        position[Int(last)] = UInt32(at)
        freeCount -= 1
        leased[i] = true
        statistics.noteAcquire()
        return generations[i]
    }

    /// Whether `generation` is the current lease of `index`.
    func isCurrent(_ index: UInt32, _ generation: UInt32) -> Bool {
        Int(index) < capacity && leased[Int(index)] && generations[Int(index)] == generation
    }

    /// Takes a lease back and moves the index's generation on; `false` (nothing changed) when the
    /// lease is not current, so a double release cannot corrupt the free list.
    mutating func release(_ index: UInt32, _ generation: UInt32) -> Bool {
        guard isCurrent(index, generation) else { return false }
        let i = Int(index)
        leased[i] = false
        generations[i] = RequestTag.nextGeneration(after: generations[i])
        freeList[freeCount] = index
        position[i] = UInt32(freeCount)
        freeCount += 1
        statistics.inUse -= 1
        return true
    }

    mutating func noteStale() { statistics.staleCompletions &+= 1 }
}
