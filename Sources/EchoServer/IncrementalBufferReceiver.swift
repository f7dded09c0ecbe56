import SocketPool
import URing

/// Receives over an incremental provided-buffer ring (`IOU_PBUF_RING_INC`, Linux 6.12;
/// ``ReceivePath`` for ``ReceiveStrategy/bufferRing`` with ``KernelFeatures/incrementalBuffers``).
///
/// The ring holds few large buffers (``ServerConfiguration/incrementalRing``). A receive takes
/// only the bytes it got from the buffer at the ring head, so many receives, of many connections,
/// share one buffer: buffer memory follows the bytes in flight, not the number of receives.
///
/// **Slices.** Each data completion becomes a *slice*: the completion's bytes, in the buffer its
/// flags name, starting where the previous completion for that buffer ended (``consumed``; the
/// kernel fills a buffer from its start onward, and the completions arrive in that order, see
/// ``arm(_:core:)``). Slices are the send queue's provided segments: a fixed table made once
/// (``sliceCapacity(sessions:maxHeldPerConnection:)``), a LIFO free list of ids, and the start
/// address of each in ``SendQueue/providedAddress``. Nothing is allocated per receive.
///
/// **Recycling.** A buffer goes back to the ring, whole, once the kernel is done with it (a
/// completion without `IORING_CQE_F_BUF_MORE` that used its last byte) and every slice taken of it
/// has been released (sent or dropped): ``outstanding`` counts its slices, ``kernelDone`` records
/// the first condition.
///
/// **Fair share.** A slice counts in ``ConnectionRecord/buffersHeld`` as the ordinary buffers its bytes
/// would have filled (``unitSize`` bytes each, at least one), and each receive asks for no more
/// than the connection's share has room for: a connection never holds more than
/// ``maxHeldPerConnection`` units, the bytes the ordinary ring would let it hold, and its
/// receiving pauses there.
///
/// **Shortage.** When every buffer is used up the receive ends with `ENOBUFS`, and the session
/// waits (``BufferWaitList``) until buffers come back, as with the ordinary ring.
struct IncrementalBufferReceiver: ~Copyable, ProvidedBufferPath {
    var buffers: BufferRing
    /// In ``unitSize`` units (see the type's description).
    let maxHeldPerConnection: Int32
    /// Bytes of one fair-share unit: the ordinary ring's buffer size.
    let unitSize: Int32
    /// Ring buffers the kernel can still put bytes into (given, not yet reported used up).
    private(set) var free: Int
    /// Receives a ring buffer holds, in ordinary buffers: how many waiters one buffer can serve.
    let receivesPerBuffer: Int
    var waiting: BufferWaitList

    // Per ring buffer.
    /// Bytes of the buffer the kernel has filled so far: where its next completion's bytes start.
    let consumed: UnsafeMutablePointer<Int32>
    /// Slices taken of the buffer and not yet released.
    let outstanding: UnsafeMutablePointer<Int32>
    /// The kernel has moved past the buffer (it is full); it comes back when `outstanding` is 0.
    let kernelDone: UnsafeMutablePointer<Bool>

    // Per slice (slice ids are the send queue's provided segment ids).
    /// Where each slice starts: the send queue's table, written here at each receive.
    let address: UnsafeMutablePointer<UnsafeMutableRawPointer?>
    /// The ring buffer each slice lies in.
    let sliceBuffer: UnsafeMutablePointer<UInt16>
    /// The fair-share units each slice counts for its holder.
    let sliceUnits: UnsafeMutablePointer<Int32>
    /// The LIFO free list of slice ids: `freeSlices[0..<freeSliceCount]`.
    let freeSlices: UnsafeMutablePointer<Int32>
    private(set) var freeSliceCount: Int
    let sliceCount: Int
    /// Free slices kept for the receives in flight (one per session at most): with no more
    /// free, a receive waits as on `ENOBUFS` instead of being armed, so a completion always finds
    /// a slice.
    let reserve: Int

    /// Slices a ring's table needs: each connection's full share (a slice counts at least one
    /// unit, so a connection holds at most `maxHeldPerConnection` slices), bounded at 2^22, plus
    /// one per session for the receives in flight (the reserve). Below the bound the table
    /// cannot run out before the shares do; at it (millions of connections, each holding its
    /// whole share in tiny slices) receives wait as on `ENOBUFS` until slices come back.
    static func sliceCapacity(sessions: Int, maxHeldPerConnection: Int) -> Int {
        min(sessions * max(maxHeldPerConnection, 1), 1 << 22) + sessions
    }

    /// Bytes of bookkeeping per slice: its address, length and link in the send queue, its
    /// buffer, its units and its free-list entry.
    static let bytesPerSlice = 32

    /// - Parameters:
    ///   - buffers: an incremental ring (``BufferRing/Flags/incremental``).
    ///   - sessions: the loop's session capacity.
    ///   - maxHeldPerConnection: a connection's fair share, in units of `unitSize` bytes.
    ///   - unitSize: the ordinary ring's buffer size.
    ///   - queue: the send queue, made with ``ProvidedSegments/slices(count:)`` of
    ///     ``sliceCapacity(sessions:maxHeldPerConnection:)`` slices.
    init(
        buffers: consuming BufferRing, sessions: Int, maxHeldPerConnection: Int, unitSize: Int,
        queue: borrowing SendQueue
    ) {
        let count = buffers.count
        free = count
        receivesPerBuffer = max(1, buffers.bufferSize / max(unitSize, 1))
        self.buffers = buffers
        self.maxHeldPerConnection = Int32(max(1, min(maxHeldPerConnection, Int(Int32.max))))
        self.unitSize = Int32(max(1, min(unitSize, Int(Int32.max))))
        waiting = BufferWaitList(sessions: sessions)
        consumed = .allocate(capacity: count)
        consumed.initialize(repeating: 0, count: count)
        outstanding = .allocate(capacity: count)
        outstanding.initialize(repeating: 0, count: count)
        kernelDone = .allocate(capacity: count)
        kernelDone.initialize(repeating: false, count: count)
        sliceCount = Int(queue.outboundFirst)
        reserve = min(sessions, sliceCount / 2)
        address = queue.providedAddress
        sliceBuffer = .allocate(capacity: max(sliceCount, 1))
        sliceBuffer.initialize(repeating: 0, count: max(sliceCount, 1))
        sliceUnits = .allocate(capacity: max(sliceCount, 1))
        sliceUnits.initialize(repeating: 0, count: max(sliceCount, 1))
        freeSlices = .allocate(capacity: max(sliceCount, 1))
        // Slice 0 on top: low ids are reused first.
        for i in 0..<sliceCount { freeSlices[i] = Int32(sliceCount - 1 - i) }
        freeSliceCount = sliceCount
    }

    deinit {
        consumed.deallocate()
        outstanding.deallocate()
        kernelDone.deallocate()
        sliceBuffer.deallocate()
        sliceUnits.deallocate()
        freeSlices.deallocate()
    }

    /// Slices taken and not yet released (0 when idle). A slice holds a part of a buffer, so this
    /// can exceed the number of buffers: that is the point.
    var buffersHeld: Int { sliceCount - freeSliceCount }

    @inline(__always) func ended(_ c: Completion) -> Bool { true }

    /// One single-shot receive, for at most the bytes the connection's share has room for.
    ///
    /// Not multishot, for two reasons. A multishot receive takes what the socket holds, up to 32
    /// receives in one go before the loop sees any of them: with buffers of 64 KiB that is up to
    /// 2 MiB to one connection, past its share before a cancel could stop it (the ordinary
    /// ring's 4 KiB buffers bound that at 128 KiB). And the kernel posts a multishot receive's
    /// completions as it takes the bytes but a single-shot one's at the end of its batch, so
    /// mixing the two would let a later receive's completion arrive before an earlier one's
    /// for the same buffer, and ``consumed`` would place both wrong. Single-shot completions
    /// arrive in the order the kernel consumed the bytes.
    @inline(__always)
    mutating func arm(_ s: ConnectionRef, core: URingCore) throws(URingError) {
        let room = Int(max(maxHeldPerConnection - s.pointee.buffersHeld, 1)) * Int(unitSize)
        try core.ring.prepareRecv(
            s.pointee.session.file, bufferGroup: buffers.group, multishot: false,
            maxLength: UInt32(min(room, buffers.bufferSize)), tag: s.pointee.tag(.recv))
        s.pointee.lifecycle.posted(.recv)
    }

    /// Buffers left, and the slice table above its reserve for the receives in flight.
    @inline(__always) var canArm: Bool { free > 0 && freeSliceCount > reserve }
    /// A buffer serves several receives: as many waiters as the free buffers hold ordinary-sized
    /// receives.
    @inline(__always) var wakeBudget: Int { free * receivesPerBuffer }
    @inline(__always) mutating func commitReturned() { buffers.commit() }
    @inline(__always) mutating func nextWaiter(_ core: URingCore) -> ConnectionRef? { waiting.popToRearm(core) }

    /// Places a data completion's bytes: buffer `id`, from where its previous completion ended.
    /// - Returns: the start of the bytes, or nil when the completion does not fit the buffer
    ///   (which the kernel's contract rules out).
    @inline(__always)
    mutating func place(_ c: Completion) -> (id: Int, start: Int)? {
        let id = Int(c.bufferID.unsafelyUnwrapped)
        guard id < buffers.count else { return nil }
        let start = Int(consumed[id])
        let end = start + Int(c.result)
        guard end <= buffers.bufferSize else { return nil }
        consumed[id] = Int32(end)
        // The kernel is done with the buffer when it says so and it is full. Both hold together by
        // the kernel's contract; should they ever disagree, the buffer is kept (the kernel may
        // still fill it) rather than given back while it might be written.
        if !c.hasBufferMore && end == buffers.bufferSize {
            kernelDone[id] = true
            free -= 1
        }
        return (id, start)
    }

    @inline(__always)
    mutating func take(_ c: Completion, _ s: ConnectionRef) -> (UnsafeMutableRawBufferPointer, Int32)? {
        guard let (id, start) = place(c) else { return nil }
        guard freeSliceCount > 0 else {  // ruled out by the reserve; should it happen, the loop closes `s`
            recycleIfUnused(id)
            return nil
        }
        freeSliceCount -= 1
        let slice = Int(freeSlices[freeSliceCount])
        let count = Int(c.result)
        let units = Int32((count + Int(unitSize) - 1) / Int(unitSize))
        let bytes = buffers.buffer(UInt16(truncatingIfNeeded: id)).baseAddress.unsafelyUnwrapped + start
        address[slice] = bytes
        sliceBuffer[slice] = UInt16(truncatingIfNeeded: id)
        sliceUnits[slice] = units
        outstanding[id] += 1
        s.pointee.buffersHeld += units
        return (UnsafeMutableRawBufferPointer(start: bytes, count: count), Int32(slice))
    }

    /// A completion nobody reads (a stale one): its bytes still used up part of its buffer.
    @inline(__always)
    mutating func discard(_ c: Completion) {
        guard c.result > 0, c.hasBuffer, let (id, _) = place(c) else { return }
        recycleIfUnused(id)
    }

    @inline(__always)
    mutating func release(_ segment: Int32, of s: ConnectionRef) {
        let slice = Int(segment)
        let id = Int(sliceBuffer[slice])
        s.pointee.buffersHeld -= sliceUnits[slice]
        freeSlices[freeSliceCount] = segment
        freeSliceCount += 1
        outstanding[id] -= 1
        recycleIfUnused(id)
    }

    /// Gives buffer `id` back to the ring, whole, if the kernel is done with it and no slice of it
    /// is held.
    @inline(__always)
    mutating func recycleIfUnused(_ id: Int) {
        guard kernelDone[id] && outstanding[id] == 0 else { return }
        kernelDone[id] = false
        consumed[id] = 0
        buffers.recycle(UInt16(truncatingIfNeeded: id))
        free += 1
    }

    mutating func waitForBuffers(_ s: ConnectionRef) { waiting.add(s) }

    mutating func teardown(core: URingCore) {
        try? buffers.unregister(from: core.ring)
    }
}
