import Glibc
import URing
import SocketPool

/// Every connection's send queue, over storage made once per ring.
///
/// A queue is a singly linked list of **segments**, each a buffer and a length, held in the
/// connection's record (``ConnectionRecord/output``). Segment ids share one space:
///
/// | ids | segment |
/// |---|---|
/// | `0 ..< provided` | received bytes in provided-buffer memory (echoed in place, zero copy): a whole provided buffer, or a slice of an incremental one; ``providedAddress`` says where each starts |
/// | `outboundFirst ..< outboundFirst + outbound` | a pooled outbound buffer that ``write(_:to:coalesce:)`` copied into |
/// | `sessionFirst + index` | session `index`'s own buffer (per-session receive, echoed in place) |
///
/// Outbound buffers come from a LIFO free list: a write allocates nothing. A write appends to the
/// last outbound segment while it has room, so many small writes go out in one send. Every write
/// first reserves its buffers in the connection's account (``RemoteConnections/reserveBuffers(_:_:)``:
/// its guarantee, then its fair share of the shared pool), so the free list holds a buffer for
/// every reservation: one for each session's guarantee and the shared pool. Their memory is
/// reserved address space, touched only as buffers are used (the free list is LIFO, so the same
/// few are reused).
struct SendQueue: ~Copyable {
    let length: UnsafeMutablePointer<Int32>
    let next: UnsafeMutablePointer<Int32>
    /// Where each provided segment starts: written once for a buffer ring (buffer `id` at
    /// `base + id * size`), by the receiver at each receive for slices of an incremental ring.
    let providedAddress: UnsafeMutablePointer<UnsafeMutableRawPointer?>
    let outboundFirst: Int32
    let outboundCount: Int
    let outboundSize: Int
    let outboundBase: UnsafeMutableRawPointer
    let outboundBytes: Int
    let sessionFirst: Int32
    let outboundFree: UnsafeMutablePointer<Int32>
    private(set) var outboundAvailable: Int
    /// The accounts of the outbound buffers, shared with writers on other threads: every write
    /// reserves its buffers there first, so one reserved from elsewhere always finds them.
    let pool: RemoteConnections
    /// Set when a buffer of the shared pool came free: writers of other connections waiting for
    /// one are woken after the loop's turn (``takeSharedFreed()``).
    private(set) var sharedFreed = false
    /// Per session: a `msghdr` and ``maxGather`` iovecs for a send of several segments at once.
    let headers: UnsafeMutablePointer<msghdr>
    let iovecs: UnsafeMutablePointer<iovec>
    static let maxGather = 16

    /// - Parameters:
    ///   - provided: the provided segments (none without a buffer ring).
    ///   - outboundSize: bytes per outbound buffer; `pool` says how many (``RemoteConnections/totalBuffers``).
    ///   - sessions: sessions with their own buffer (0 with a buffer ring).
    /// - Throws: when the address space for the outbound buffers cannot be reserved.
    init(
        provided providedSegments: ProvidedSegments, outboundSize: Int, sessions: Int, capacity: Int,
        pool: RemoteConnections
    ) throws(URingError) {
        let outbound = pool.totalBuffers
        outboundBytes = max(outbound * outboundSize, 1)
        // Reserved, not committed: pages are touched only as buffers are used.
        guard let base = mmap(nil, outboundBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0),
            base != MAP_FAILED
        else {
            throw URingError("mmap \(outboundBytes) bytes of outbound buffers", errno: .current)
        }
        outboundBase = base
        self.pool = pool
        headers = .allocate(capacity: capacity)
        headers.initialize(repeating: msghdr(), count: capacity)
        iovecs = .allocate(capacity: capacity * Self.maxGather)
        iovecs.initialize(repeating: iovec(), count: capacity * Self.maxGather)
        let provided = providedSegments.count
        let total = provided + outbound + sessions
        length = .allocate(capacity: max(total, 1))
        length.initialize(repeating: 0, count: max(total, 1))
        next = .allocate(capacity: max(total, 1))
        next.initialize(repeating: -1, count: max(total, 1))
        providedAddress = .allocate(capacity: max(provided, 1))
        providedAddress.initialize(repeating: nil, count: max(provided, 1))
        if case .buffers(let base, let count, let size) = providedSegments {
            for id in 0..<count { providedAddress[id] = base + id * size }
        }
        outboundFirst = Int32(provided)
        outboundCount = outbound
        self.outboundSize = outboundSize
        sessionFirst = Int32(provided + outbound)
        outboundFree = .allocate(capacity: max(outbound, 1))
        for i in 0..<outbound { outboundFree[i] = outboundFirst + Int32(outbound - 1 - i) }
        outboundAvailable = outbound
    }

    deinit {
        headers.deallocate()
        iovecs.deallocate()
        length.deallocate()
        next.deallocate()
        providedAddress.deallocate()
        munmap(outboundBase, outboundBytes)
        outboundFree.deallocate()
    }

    @inline(__always) func isOutbound(_ id: Int32) -> Bool {
        id >= outboundFirst && id < outboundFirst + Int32(outboundCount)
    }

    /// The memory of segment `id` (a session segment's is that session's buffer).
    @inline(__always)
    func base(_ id: Int32, _ s: ConnectionRef) -> UnsafeMutableRawPointer {
        if id < outboundFirst { return providedAddress[Int(id)].unsafelyUnwrapped }
        if id < sessionFirst { return outboundBase + Int(id - outboundFirst) * outboundSize }
        return s.pointee.session.buffer.baseAddress.unsafelyUnwrapped
    }

    /// The unsent bytes of `s`'s head segment, or nil when its queue is empty.
    @inline(__always)
    func head(_ s: ConnectionRef) -> UnsafeRawBufferPointer? {
        let id = s.pointee.output.head
        guard id >= 0 else { return nil }
        let start = base(id, s) + Int(s.pointee.output.headSent)
        return UnsafeRawBufferPointer(start: start, count: Int(length[Int(id)] - s.pointee.output.headSent))
    }

    /// Links segment `id` of `count` bytes after segment `anchor` (-1: at the front) of `s`'s queue.
    /// Inserting at the front is only valid while no send of `s` is in flight.
    @inline(__always)
    func insert(_ id: Int32, count: Int, after anchor: Int32, in s: ConnectionRef) {
        length[Int(id)] = Int32(count)
        if anchor < 0 {
            next[Int(id)] = s.pointee.output.head
            s.pointee.output.head = id
            s.pointee.output.headSent = 0
        } else {
            next[Int(id)] = next[Int(anchor)]
            next[Int(anchor)] = id
        }
        if next[Int(id)] < 0 { s.pointee.output.tail = id }
        s.pointee.output.bytes += count
    }

    /// Copies `bytes` to the end of `s`'s queue: into the room left in its last outbound segment
    /// (unless `coalesce` is false), then into fresh outbound buffers. All or nothing.
    /// - Parameter reserved: outbound buffers already reserved for these bytes (a write from
    ///   another thread); what they do not need is given back.
    /// - Returns: false (nothing queued) when `s` cannot have the buffers now (its guarantee and
    ///   its share of the shared pool are taken), or would hold more than `maxHeld` of them.
    mutating func write(
        _ bytes: UnsafeRawBufferPointer, to s: ConnectionRef, coalesce: Bool, maxHeld: Int = .max, reserved: Int = 0
    ) -> Bool {
        var remaining = bytes.count
        let index = s.pointee.session.index
        let tail = s.pointee.output.tail
        let room = tail >= 0 && coalesce && isOutbound(tail) ? outboundSize - Int(length[Int(tail)]) : 0
        let needed = (max(remaining - room, 0) + outboundSize - 1) / outboundSize
        guard Int(s.pointee.output.outboundHeld) + needed <= maxHeld,
            needed <= reserved || pool.reserveBuffers(index, needed - reserved)
        else {
            release(reserved, of: index)
            return false
        }
        if reserved > needed { release(reserved - needed, of: index) }
        guard remaining > 0 else { return true }
        var source = bytes.baseAddress.unsafelyUnwrapped
        if room > 0 {
            let n = min(room, remaining)
            (base(tail, s) + Int(length[Int(tail)])).copyMemory(from: source, byteCount: n)
            length[Int(tail)] += Int32(n)
            s.pointee.output.bytes += n
            source += n
            remaining -= n
        }
        while remaining > 0 {
            outboundAvailable -= 1
            s.pointee.output.outboundHeld += 1
            let id = outboundFree[outboundAvailable]
            let n = min(outboundSize, remaining)
            base(id, s).copyMemory(from: source, byteCount: n)
            insert(id, count: n, after: s.pointee.output.tail, in: s)
            source += n
            remaining -= n
        }
        return true
    }

    /// Whether more than one segment is queued (a gathering send is worth it).
    @inline(__always)
    func hasSeveral(_ s: ConnectionRef) -> Bool {
        s.pointee.output.head >= 0 && next[Int(s.pointee.output.head)] >= 0
    }

    /// Fills `s`'s `msghdr` with up to ``maxGather`` of its queued segments, from the unsent part of
    /// the head on.
    func gather(_ s: ConnectionRef) -> UnsafePointer<msghdr> {
        let index = Int(s.pointee.session.lease.index)
        let iov = iovecs + index * Self.maxGather
        var id = s.pointee.output.head
        var count = 0
        var offset = Int(s.pointee.output.headSent)
        while id >= 0 && count < Self.maxGather {
            iov[count] = iovec(iov_base: base(id, s) + offset, iov_len: Int(length[Int(id)]) - offset)
            count += 1
            offset = 0
            id = next[Int(id)]
        }
        headers[index] = msghdr()
        headers[index].msg_iov = iov
        headers[index].msg_iovlen = count
        return UnsafePointer(headers + index)
    }

    /// Takes up to `remaining` sent bytes off the head of `s`'s queue. Returns the head's id if it
    /// is now all sent (and unlinked; call again for the rest), or -1 when the bytes ended inside it.
    @inline(__always)
    func consume(_ s: ConnectionRef, _ remaining: inout Int) -> Int32 {
        let id = s.pointee.output.head
        guard id >= 0 else { return -1 }
        let left = Int(length[Int(id)] - s.pointee.output.headSent)
        if remaining < left {
            s.pointee.output.headSent += Int32(remaining)
            s.pointee.output.bytes -= remaining
            remaining = 0
            return -1
        }
        remaining -= left
        s.pointee.output.bytes -= left
        s.pointee.output.head = next[Int(id)]
        if s.pointee.output.head < 0 { s.pointee.output.tail = -1 }
        s.pointee.output.headSent = 0
        return id
    }

    /// Empties `s`'s queue and returns its first segment; follow ``next`` from there to give
    /// each back (the links stay valid until the segments are reused).
    func detachAll(_ s: ConnectionRef) -> Int32 {
        let head = s.pointee.output.head
        s.pointee.output.head = -1
        s.pointee.output.tail = -1
        s.pointee.output.bytes = 0
        s.pointee.output.headSent = 0
        return head
    }

    /// Returns an outbound segment of `s` to the free list.
    @inline(__always)
    mutating func freeOutbound(_ id: Int32, of s: ConnectionRef) {
        s.pointee.output.outboundHeld -= 1
        outboundFree[outboundAvailable] = id
        outboundAvailable += 1
        release(1, of: s.pointee.session.index)
    }

    /// Gives `n` buffers of session `index`'s account back, and wakes its writers waiting for them.
    @inline(__always)
    mutating func release(_ n: Int, of index: Int) {
        guard n > 0 else { return }
        if pool.releaseBuffers(index, n) { sharedFreed = true }
        pool.wakeWriters(index)
    }

    /// Whether a buffer of the shared pool came free since the last call.
    mutating func takeSharedFreed() -> Bool {
        defer { sharedFreed = false }
        return sharedFreed
    }
}
