import SocketPool
import URing

/// Multishot recv over one provided-buffer ring shared by every session of the loop
/// (``ReceivePath`` for ``ReceiveStrategy/bufferRing``): memory independent of the number of
/// connections. A buffer goes back to the ring only after the send that echoed it completes.
///
/// Fair use: a connection holds at most ``maxHeldPerConnection`` buffers (a client that stops
/// reading and trickles 1-byte segments would otherwise pin one whole buffer per byte); its
/// receiving pauses there. Multishot while nothing waits to be sent; once bytes are queued, one
/// buffer per request, so a connection never holds much more than its bound.
///
/// When the ring runs dry, a receive ends with `ENOBUFS` (the data, or the EOF, stays in the
/// socket) and its session waits in a FIFO list until buffers come back.
struct BufferRingReceiver: ~Copyable, ProvidedBufferPath {
    var buffers: BufferRing
    let maxHeldPerConnection: Int32
    /// Multishot receives take several buffers per completion (``KernelFeatures/recvBundles``),
    /// at most ``bundleBytes`` each.
    var bundles: Bool
    let bundleBytes: UInt32
    /// A bundle has completed: a later `EINVAL` is not the kernel refusing bundles.
    var bundleWorked = false
    /// Each multishot receive ends after a connection's share of the ring in bytes, less what it
    /// holds (``KernelFeatures/receiveLimit``; 0 without).
    var limitBytes: UInt32
    /// Bytes of one buffer.
    let bufferBytes: UInt32
    /// A limited multishot receive has delivered bytes: a later `EINVAL` is not the kernel
    /// refusing the limit.
    var limitWorked = false
    /// The ring position of the current bundle's first buffer, read when it is taken: giving that
    /// buffer back (which can happen before the next part is taken) moves its recorded position.
    var bundleStart: UInt16 = 0
    private(set) var free: Int
    var waiting: BufferWaitList

    init(
        buffers: consuming BufferRing, sessions: Int, maxHeldPerConnection: Int, bundles: Bool = false,
        limit: Bool = false
    ) {
        free = buffers.count
        self.bundles = bundles
        limitBytes = limit ? UInt32(min(maxHeldPerConnection, buffers.count) * buffers.bufferSize) : 0
        bufferBytes = UInt32(buffers.bufferSize)
        // A bundle takes at most half a connection's share of buffers: one socket with a lot
        // queued cannot empty the ring in one completion.
        bundleBytes = UInt32(max(1, min(maxHeldPerConnection, buffers.count) / 2) * buffers.bufferSize)
        self.buffers = buffers
        self.maxHeldPerConnection = Int32(max(1, min(maxHeldPerConnection, Int(Int32.max))))
        waiting = BufferWaitList(sessions: sessions)
    }

    var buffersHeld: Int { buffers.count - free }

    @inline(__always) func ended(_ c: Completion) -> Bool { !c.hasMore }

    @inline(__always)
    mutating func arm(_ s: ConnectionRef, core: URingCore) throws(URingError) {
        // With a receive limit, always multishot: it stops at what is left of the connection's
        // share, so the share holds whatever the connection already holds. Without one, multishot
        // only while nothing is held or queued; behind a queue, one buffer per request (and no
        // bundle), so the share holds.
        let room = limitBytes != 0 ? UInt32(maxHeldPerConnection - s.pointee.buffersHeld) * bufferBytes : 0
        let multishot = limitBytes != 0 || (s.pointee.output.head < 0 && s.pointee.buffersHeld == 0)
        let bundle = bundles && multishot
        try core.ring.prepareRecv(
            s.pointee.session.file, bufferGroup: buffers.group, multishot: multishot, bundle: bundle,
            maxLength: bundle ? min(bundleBytes, limitBytes != 0 ? room : bundleBytes) : 0, limit: room,
            tag: s.pointee.tag(.recv))
        s.pointee.lifecycle.posted(.recv)
    }

    @inline(__always) var canArm: Bool { free > 0 }
    @inline(__always) var wakeBudget: Int { free }
    @inline(__always) mutating func commitReturned() { buffers.commit() }
    @inline(__always) mutating func nextWaiter(_ core: URingCore) -> ConnectionRef? { waiting.popToRearm(core) }

    @inline(__always)
    mutating func take(_ c: Completion, _ s: ConnectionRef) -> (UnsafeMutableRawBufferPointer, Int32)? {
        let id = c.bufferID.unsafelyUnwrapped
        if bundles { bundleStart = buffers.position(of: id) }
        if limitBytes != 0 { limitWorked = true }
        free -= 1
        s.pointee.buffersHeld += 1
        // A bundle's first buffer is full; the rest follow (take(_:_:part:)).
        return (UnsafeMutableRawBufferPointer(rebasing: buffers.buffer(id)[0..<min(Int(c.result), buffers.bufferSize)]), Int32(id))
    }

    @inline(__always)
    func parts(_ c: Completion) -> Int {
        bundles ? (Int(c.result) + buffers.bufferSize - 1) / buffers.bufferSize : 1
    }

    /// Part `part` of a bundle: the buffers after the first in the ring, each full but the last.
    @inline(__always)
    mutating func take(_ c: Completion, _ s: ConnectionRef, part: Int)
        -> (UnsafeMutableRawBufferPointer, Int32)?
    {
        guard part > 0 else { return take(c, s) }
        if part == 1 { bundleWorked = true }
        let id = buffers.buffer(atPosition: bundleStart &+ UInt16(truncatingIfNeeded: part))
        let count = min(Int(c.result) - part * buffers.bufferSize, buffers.bufferSize)
        free -= 1
        s.pointee.buffersHeld += 1
        return (UnsafeMutableRawBufferPointer(rebasing: buffers.buffer(id)[0..<count]), Int32(id))
    }

    @inline(__always)
    mutating func discard(_ c: Completion) {
        // A completion that took buffers: straight back, so `free` stays true.
        guard let id = c.bufferID else { return }
        let start = buffers.position(of: id)  // before recycle(id) moves it
        buffers.recycle(id)
        if c.result > 0 {
            for part in 1..<max(parts(c), 1) {
                buffers.recycle(buffers.buffer(atPosition: start &+ UInt16(truncatingIfNeeded: part)))
            }
        }
    }

    /// A kernel without them refuses a receive limit (before 6.17) or bundles (a kernel with
    /// bundles but without a per-completion limit on multishot receives) with `EINVAL`: receive
    /// without the newer first, then without bundles.
    mutating func fallBack(after error: Errno, core: URingCore) -> Bool {
        guard error == .invalidArgument else { return false }
        if limitBytes != 0 && !limitWorked {
            limitBytes = 0
            core.fallBack(from: .receiveLimit, "multishot receive limit refused (EINVAL); the buffer share is a soft bound")
            return true
        }
        guard bundles && !bundleWorked else { return false }
        bundles = false
        core.fallBack(from: .recvBundles, "recv bundles refused (EINVAL); receiving one buffer per completion")
        return true
    }

    @inline(__always)
    mutating func release(_ segment: Int32, of s: ConnectionRef) {
        buffers.recycle(UInt16(truncatingIfNeeded: segment))
        free += 1
        s.pointee.buffersHeld -= 1
    }

    mutating func waitForBuffers(_ s: ConnectionRef) { waiting.add(s) }

    mutating func teardown(core: URingCore) {
        try? buffers.unregister(from: core.ring)
    }
}
