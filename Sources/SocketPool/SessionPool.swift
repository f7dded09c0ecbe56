import Glibc
import URing

/// Whether sessions and their buffers are made once and reused, or made per connection.
public enum PoolMode: String, Sendable, Hashable, CaseIterable {
    /// Preallocated sessions and buffers, fixed slots: nothing is allocated per connection.
    case pooled
    /// A session and a buffer allocated per connection and freed at close; plain descriptors.
    case unpooled
}

/// Sessions for up to `capacity` connections.
///
/// Both modes share one code path — a table of session addresses indexed by ``SessionHandle`` —
/// and differ only in where a session comes from and where it goes: in ``PoolMode/pooled`` mode the
/// table points into one preallocated block of sessions and one block of buffers, made at init; in
/// ``PoolMode/unpooled`` mode ``acquire(file:slotGeneration:)`` allocates a session and its buffer and
/// ``release(_:)`` frees them. That difference is what the benchmarks compare.
///
/// A session is recycled only when its in-flight count is zero (the IOCP `IoCount` rule):
/// ``release(_:)`` refuses otherwise.
///
/// Confined to the ring's thread: not `Sendable`, no locks.
public struct SessionPool: ~Copyable {
    let table: UnsafeMutablePointer<UnsafeMutablePointer<Session>?>
    var indices: GenerationalFreeList
    let block: UnsafeMutablePointer<Session>?
    let bufferBlock: UnsafeMutableRawPointer?
    /// Pooled or unpooled.
    public let mode: PoolMode
    /// The most sessions at once.
    public let capacity: Int
    /// Bytes of buffer per session (0 when receives use a shared buffer ring).
    public let bufferSize: Int
    /// Counters. In unpooled mode every hit is an allocation.
    public var statistics: PoolStatistics { indices.statistics }
    /// Connections handed out so far: each session's ``Session/epoch``.
    public private(set) var epochs: UInt64 = 0
    /// Releases refused because requests were still in flight.
    public private(set) var refusedReleases: UInt64 = 0

    /// Creates the pool; in pooled mode, allocates every session and buffer now.
    /// - Parameters:
    ///   - mode: pooled or unpooled.
    ///   - capacity: the most connections at once.
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
            let sessions = UnsafeMutablePointer<Session>.allocate(capacity: capacity)
            let buffers = bufferSize > 0 ? UnsafeMutableRawPointer.allocate(byteCount: capacity * bufferSize, alignment: 64) : nil
            for i in 0..<capacity {
                let buffer = UnsafeMutableRawBufferPointer(start: buffers.map { $0 + i * bufferSize }, count: bufferSize)
                (sessions + i).initialize(to: Session(index: UInt32(i), buffer: buffer))
                table[i] = sessions + i
            }
            block = sessions
            bufferBlock = buffers
        } else {
            block = nil
            bufferBlock = nil
        }
    }

    deinit {
        if mode == .unpooled {
            for i in 0..<capacity {
                if let session = table[i] { Self.free(session) }
            }
        }
        block?.deallocate()
        bufferBlock?.deallocate()
        table.deallocate()
    }

    @usableFromInline
    static func free(_ session: UnsafeMutablePointer<Session>) {
        session.pointee.buffer.baseAddress.map { UnsafeMutableRawPointer($0).deallocate() }
        session.deinitialize(count: 1)
        session.deallocate()
    }

    /// Hands out a session for a new connection on `file`, in state ``SessionState/open``.
    /// - Parameters:
    ///   - file: the connection's slot or fd.
    ///   - slotGeneration: the slot lease's generation when `file` is a slot.
    /// - Returns: its handle, or `nil` when `capacity` sessions are in use (counted as a miss).
    public mutating func acquire(file: FileRef, slotGeneration: UInt32 = 0) -> SessionHandle? {
        guard let (index, generation) = indices.acquire() else { return nil }
        let session: UnsafeMutablePointer<Session>
        if let existing = table[Int(index)] {
            session = existing
        } else {
            // Unpooled: this allocation per connection is the point of the comparison.
            session = .allocate(capacity: 1)
            let buffer =
                bufferSize > 0
                ? UnsafeMutableRawBufferPointer.allocate(byteCount: bufferSize, alignment: 64)
                : UnsafeMutableRawBufferPointer(start: nil, count: 0)
            session.initialize(to: Session(index: index, buffer: buffer))
            table[Int(index)] = session
        }
        let buffer = session.pointee.buffer
        session.pointee = Session(index: index, buffer: buffer)
        session.pointee.generation = generation
        epochs &+= 1
        session.pointee.epoch = epochs
        session.pointee.file = file
        session.pointee.slotGeneration = slotGeneration
        session.pointee.state = .open
        return SessionHandle(index: index, generation: generation)
    }

    /// The session a handle names, or `nil` if it has been recycled since (counted as stale).
    /// - Parameter handle: a handle from ``acquire(file:slotGeneration:)``.
    public mutating func resolve(_ handle: SessionHandle) -> UnsafeMutablePointer<Session>? {
        if indices.isCurrent(handle.index, handle.generation), let session = table[Int(handle.index)] {
            return session
        }
        indices.noteStale()
        return nil
    }

    /// The session at `index` if it is in use, without a generation check (for sweeps).
    /// - Parameter index: a pool index.
    public func session(at index: Int) -> UnsafeMutablePointer<Session>? {
        guard let s = table[index], s.pointee.state != .free else { return nil }
        return s
    }

    /// Recycles a session whose in-flight count is zero; in unpooled mode its memory is freed.
    /// - Parameter handle: the session.
    /// - Returns: `false` (and changes nothing) if requests are still in flight or the handle is
    ///   stale.
    @discardableResult
    public mutating func release(_ handle: SessionHandle) -> Bool {
        guard indices.isCurrent(handle.index, handle.generation), let session = table[Int(handle.index)] else {
            return false
        }
        guard session.pointee.inFlight == 0 else {
            refusedReleases &+= 1
            return false
        }
        session.pointee.state = .free
        _ = indices.release(handle.index, handle.generation)
        if mode == .unpooled {
            Self.free(session)
            table[Int(handle.index)] = nil
        }
        return true
    }

    /// Sessions currently free.
    public var available: Int { indices.freeCount }
}
