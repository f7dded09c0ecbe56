import URing

/// Sessions for up to `capacity` connections, each a `Record` at a stable address.
///
/// Both modes share one code path — a table of record addresses indexed by the session's
/// ``Lease`` — and differ only in where a record comes from and where it goes: in
/// ``PoolMode/pooled`` mode the table points into one block of records and one block of buffers,
/// made at init; in ``PoolMode/unpooled`` mode ``acquire(file:slot:)`` allocates a record and its
/// buffer and ``release(_:)`` frees them. That difference is what the benchmarks compare.
///
/// The owner decides when a session may be recycled (the IOCP `IoCount` rule: when no request of
/// it is in flight); the pool only refuses a lease that is not current.
///
/// Confined to the ring's thread: not `Sendable`, no locks.
public struct SessionPool<Record: SessionRecord>: ~Copyable {
    @usableFromInline let table: UnsafeMutablePointer<UnsafeMutablePointer<Record>?>
    @usableFromInline var indices: GenerationalFreeList
    @usableFromInline let block: UnsafeMutablePointer<Record>?
    @usableFromInline let bufferBlock: UnsafeMutableRawPointer?
    /// Pooled or unpooled.
    public let mode: PoolMode
    /// The most sessions at once.
    public let capacity: Int
    /// Bytes of buffer per session (0 when receives use a shared buffer ring).
    public let bufferSize: Int
    /// Counters. In unpooled mode every hit is an allocation.
    public var statistics: PoolStatistics { indices.statistics }
    /// Sessions handed out so far: each one's ``PooledSession/epoch``.
    @usableFromInline private(set) var epochs: UInt64 = 0

    /// Creates the pool; in pooled mode, allocates every record and buffer now.
    /// - Parameters:
    ///   - mode: pooled or unpooled.
    ///   - capacity: the most sessions at once.
    ///   - bufferSize: per-session buffer bytes (may be 0).
    public init(mode: PoolMode, capacity: Int, bufferSize: Int) {
        precondition(capacity > 0 && bufferSize >= 0)
        self.mode = mode
        self.capacity = capacity
        self.bufferSize = bufferSize
        table = .allocate(capacity: capacity)
        table.initialize(repeating: nil, count: capacity)
        indices = GenerationalFreeList(capacity: capacity)
        if mode == .pooled {
            block = .allocate(capacity: capacity)
            bufferBlock = bufferSize > 0 ? .allocate(byteCount: capacity * bufferSize, alignment: 64) : nil
            for i in 0..<capacity { table[i] = block.unsafelyUnwrapped + i }
        } else {
            block = nil
            bufferBlock = nil
        }
    }

    deinit {
        for i in 0..<capacity where indices.isLeased(i) {
            let record = table[i].unsafelyUnwrapped
            if mode == .unpooled { Self.free(record) } else { record.deinitialize(count: 1) }
        }
        block?.deallocate()
        bufferBlock?.deallocate()
        table.deallocate()
        indices.deallocate()
    }

    @usableFromInline
    static func free(_ record: UnsafeMutablePointer<Record>) {
        record.pointee.session.buffer.baseAddress.map { UnsafeMutableRawPointer($0).deallocate() }
        record.deinitialize(count: 1)
        record.deallocate()
    }

    /// Hands out a session for a new connection on `file`.
    /// - Parameters:
    ///   - file: the connection's slot or descriptor.
    ///   - slot: the slot's lease when `file` is a fixed slot.
    /// - Returns: its record, made with `Record(_:)`, or `nil` when `capacity` sessions are in use
    ///   (counted as a miss).
    @inlinable
    public mutating func acquire(file: FileRef, slot: Lease? = nil) -> UnsafeMutablePointer<Record>? {
        guard let lease = indices.acquire() else { return nil }
        let i = Int(lease.index)
        let record: UnsafeMutablePointer<Record>
        let buffer: UnsafeMutableRawBufferPointer
        if let bufferBlock {
            record = table[i].unsafelyUnwrapped
            buffer = UnsafeMutableRawBufferPointer(start: bufferBlock + i * bufferSize, count: bufferSize)
        } else if mode == .pooled {
            record = table[i].unsafelyUnwrapped
            buffer = UnsafeMutableRawBufferPointer(start: nil, count: 0)
        } else {
            // Unpooled: these allocations per connection are the point of the comparison.
            record = .allocate(capacity: 1)
            buffer =
                bufferSize > 0
                ? .allocate(byteCount: bufferSize, alignment: 64) : UnsafeMutableRawBufferPointer(start: nil, count: 0)
            table[i] = record
        }
        epochs &+= 1
        record.initialize(to: Record(PooledSession(lease: lease, epoch: epochs, file: file, slot: slot, buffer: buffer)))
        return record
    }

    /// The record a lease names, or `nil` if that session has been recycled since (counted as
    /// stale).
    /// - Parameter lease: a session's ``PooledSession/lease``, as a completion's tag carries it.
    @inlinable
    public mutating func resolve(_ lease: Lease) -> UnsafeMutablePointer<Record>? {
        guard indices.isCurrent(lease) else {
            indices.noteStale()
            return nil
        }
        return table[Int(lease.index)].unsafelyUnwrapped
    }

    /// The record at `index` if a session holds it now, without a generation check (for sweeps).
    /// - Parameter index: `0..<capacity`.
    @inlinable
    public func record(at index: Int) -> UnsafeMutablePointer<Record>? {
        indices.isLeased(index) ? table[index] : nil
    }

    /// Recycles a session; in unpooled mode its record and buffer are freed.
    /// - Parameter record: a record from ``acquire(file:slot:)``.
    /// - Returns: `false` (and changes nothing) if its lease is not current: a double release.
    @inlinable
    @discardableResult
    public mutating func release(_ record: UnsafeMutablePointer<Record>) -> Bool {
        let lease = record.pointee.session.lease
        guard indices.release(lease) else { return false }
        if mode == .unpooled {
            Self.free(record)
            table[Int(lease.index)] = nil
        } else {
            record.deinitialize(count: 1)
        }
        return true
    }

    /// Sessions currently free.
    package var available: Int { indices.freeCount }
}
