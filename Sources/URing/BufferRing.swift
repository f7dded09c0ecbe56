import CURing
import Glibc

/// A provided-buffer ring (`IORING_REGISTER_PBUF_RING`, Linux 5.19): a pool of equal buffers
/// the kernel picks from when a receive with buffer select needs one.
///
/// Memory is independent of the number of connections: a multishot receive on every socket shares
/// these buffers. A completion names the buffer it filled; the owner hands it back with
/// ``recycle(_:)`` and makes returned buffers visible with ``commit()``. When no buffer is left, a
/// receive ends with `ENOBUFS` and the data waits in the socket.
///
/// liburing 2.3 lacks `io_uring_setup_buf_ring`, so this maps the ring memory itself
/// (`mmap`, page aligned) and registers it with `io_uring_register_buf_ring`.
///
/// Registered with ``Flags/incremental`` (`IOU_PBUF_RING_INC`, Linux 6.12), a receive takes only
/// the bytes it got from the buffer at the ring head: several receives share one buffer, each
/// continuing where the previous one ended, and a completion with
/// ``Completion/hasBufferMore`` says the kernel keeps that buffer for more. The owner tracks
/// where each buffer was consumed up to; the ring only stores and republishes whole buffers.
///
/// Call ``unregister(from:)`` before the ``Ring`` goes away. If it is dropped without, its memory
/// is released and the ring keeps its registration until it exits (the kernel pins the pages, so
/// nothing writes into freed memory).
public struct BufferRing: ~Copyable {
    @usableFromInline let entries: UnsafeMutableRawPointer
    @usableFromInline let entriesBytes: Int
    @usableFromInline let storage: UnsafeMutableRawPointer
    /// The buffer group id receives name to use this ring.
    public let group: UInt16
    /// Number of buffers (a power of two).
    public let count: Int
    /// Size of each buffer in bytes.
    public let bufferSize: Int
    @usableFromInline let mask: Int32
    @usableFromInline var pending: Int32 = 0
    /// Where each buffer was last put in the ring (an unmasked 16-bit ring index), so a bundle's
    /// following buffers can be read from the entries after its first.
    @usableFromInline let positions: UnsafeMutablePointer<UInt16>
    var registered = true
    /// The registration flags the kernel accepted.
    public let flags: Flags

    /// `io_uring_buf_reg.flags`.
    public struct Flags: OptionSet, Sendable, Hashable {
        /// Raw bits.
        public let rawValue: UInt16
        /// Wraps raw bits (tests pass bits the kernel does not know, to provoke `EINVAL`).
        public init(rawValue: UInt16) { self.rawValue = rawValue }
        /// `IOU_PBUF_RING_INC` (Linux 6.12): incremental consumption. Older kernels refuse the
        /// registration with `EINVAL`.
        public static let incremental = Flags(rawValue: UInt16(CURING_IOU_PBUF_RING_INC))
    }

    /// Maps, fills and registers a buffer ring.
    /// - Parameters:
    ///   - ring: the ring to register with.
    ///   - group: the buffer group id (unique per ring).
    ///   - count: number of buffers; a power of two up to 32768.
    ///   - bufferSize: bytes per buffer.
    ///   - provided: how many buffers to hand to the kernel at once (default all); the rest wait
    ///     for ``recycle(_:)``. Fewer is useful to provoke `ENOBUFS`.
    ///   - flags: registration flags; a kernel without one refuses with `EINVAL`.
    /// - Throws: ``URingError`` with `EINVAL` for a bad count, for `mmap`, or for
    ///   `io_uring_register_buf_ring` (also `EINVAL` for flags the kernel lacks).
    public init(
        registeringWith ring: borrowing Ring, group: UInt16, count: Int, bufferSize: Int, provided: Int? = nil,
        flags: Flags = []
    ) throws(URingError) {
        guard count > 0, count <= 32768, count & (count - 1) == 0, bufferSize > 0, bufferSize <= Int(UInt32.max) else {
            throw URingError("io_uring_register_buf_ring", errno: .invalidArgument)
        }
        let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))
        let bytes = (count * 16 + pageSize - 1) / pageSize * pageSize  // sizeof(struct io_uring_buf) == 16
        let memory = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0)
        guard let memory, memory != MAP_FAILED else { throw URingError("mmap", errno: .current) }
        guard let storage = malloc(count * bufferSize) else {
            munmap(memory, bytes)
            throw URingError("malloc", errno: .noMemory)
        }
        curing_buf_ring_init(memory)
        var registration = io_uring_buf_reg()
        registration.ring_addr = UInt64(UInt(bitPattern: memory))
        registration.ring_entries = UInt32(count)
        registration.bgid = group
        curing_buf_reg_set_flags(&registration, flags.rawValue)
        let result = io_uring_register_buf_ring(ring.ring, &registration, 0)
        if result < 0 {
            munmap(memory, bytes)
            free(storage)
            throw URingError("io_uring_register_buf_ring", result: result)
        }
        self.entries = memory
        self.entriesBytes = bytes
        self.storage = storage
        self.group = group
        self.count = count
        self.bufferSize = bufferSize
        self.flags = flags
        self.mask = Int32(count - 1)
        positions = .allocate(capacity: count)
        positions.initialize(repeating: 0, count: count)
        for id in 0..<min(provided ?? count, count) { recycle(UInt16(id)) }
        commit()
    }

    deinit {
        munmap(entries, entriesBytes)
        free(storage)
        positions.deallocate()
    }

    /// The memory of buffer `id`.
    /// - Parameter id: a buffer id from ``Completion/bufferID``.
    @inlinable
    public func buffer(_ id: UInt16) -> UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: storage + Int(id) * bufferSize, count: bufferSize)
    }

    /// Queues buffer `id` for return to the kernel (`io_uring_buf_ring_add`), whole: from its start,
    /// its full length (an incremental ring's kernel moves an entry's address and length as it
    /// consumes it; a recycled buffer starts over). It becomes usable at the next ``commit()``.
    /// Give back each buffer once, only after everything that reads it (a send echoing it) has
    /// completed: a buffer returned twice would be handed to two receives.
    /// - Parameter id: the buffer to return.
    @inlinable
    public mutating func recycle(_ id: UInt16) {
        positions[Int(id)] = curing_buf_ring_tail(entries) &+ UInt16(truncatingIfNeeded: pending)
        curing_buf_ring_add(entries, storage + Int(id) * bufferSize, UInt32(bufferSize), id, mask, pending)
        pending += 1
    }

    /// Where buffer `id` was last put in the ring (an unmasked 16-bit ring index). A bundle
    /// receive (`IORING_RECVSEND_BUNDLE`) fills consecutive ring entries and names only the first:
    /// read this before giving the first buffer back (``recycle(_:)`` moves it), then the others
    /// with ``buffer(atPosition:)``.
    /// - Parameter id: a buffer a completion named.
    @inlinable
    public func position(of id: UInt16) -> UInt16 { positions[Int(id)] }

    /// The buffer in ring entry `position` (masked). The entries a bundle consumed are not reused
    /// before its buffers are recycled, so its followers can be read there.
    /// - Parameter position: a ring index from ``position(of:)`` plus an offset.
    @inlinable
    public func buffer(atPosition position: UInt16) -> UInt16 {
        curing_buf_ring_bid(entries, UInt32(position), UInt32(mask))
    }

    /// Buffers given back with ``recycle(_:)`` and not yet published by ``commit()``.
    package var returnedSinceCommit: Int { Int(pending) }

    /// Publishes the buffers queued by ``recycle(_:)`` to the kernel (`io_uring_buf_ring_advance`).
    @inlinable
    public mutating func commit() {
        if pending > 0 {
            curing_buf_ring_advance(entries, pending)
            pending = 0
        }
    }

    /// Unregisters the ring from the kernel (`io_uring_unregister_buf_ring`); a second call does
    /// nothing. The memory is freed when the value is dropped.
    /// - Parameter ring: the ring it was registered with.
    /// - Throws: ``URingError`` for `io_uring_unregister_buf_ring`.
    public mutating func unregister(from ring: borrowing Ring) throws(URingError) {
        guard registered else { return }
        registered = false
        let result = io_uring_unregister_buf_ring(ring.ring, Int32(group))
        if result < 0 { throw URingError("io_uring_unregister_buf_ring", result: result) }
    }
}
