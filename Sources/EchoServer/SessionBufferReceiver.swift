import SocketPool
import URing

/// The IOCP way: each session owns a buffer; one recv at a time into it, and the next only after
/// what it held was sent (``ReceivePath`` for ``ReceiveStrategy/perSessionBuffer``).
struct SessionBufferReceiver: ReceivePath {
    /// The send-queue segment id of session 0's buffer.
    let sessionFirst: Int32
    var buffersHeld = 0

    var maxHeldPerConnection: Int32 { .max }

    @inline(__always) func ended(_ c: Completion) -> Bool { true }

    @inline(__always)
    mutating func arm(_ s: ConnectionRef, core: URingCore) throws(URingError) {
        try core.ring.prepareRecv(s.pointee.session.file, into: s.pointee.session.buffer, tag: s.pointee.tag(.recv))
        s.pointee.lifecycle.posted(.recv)
    }

    /// The session's buffer comes back when its send completes, which re-arms it.
    @inline(__always)
    mutating func armOrWait(_ s: ConnectionRef, core: URingCore) throws(URingError) {
        if s.pointee.buffersHeld == 0 { try arm(s, core: core) }
    }

    @inline(__always)
    mutating func take(_ c: Completion, _ s: ConnectionRef) -> (UnsafeMutableRawBufferPointer, Int32)? {
        s.pointee.buffersHeld = 1
        buffersHeld += 1
        return (UnsafeMutableRawBufferPointer(rebasing: s.pointee.session.buffer[0..<Int(c.result)]),
                sessionFirst + Int32(s.pointee.session.lease.index))
    }

    @inline(__always) mutating func discard(_ c: Completion) {}

    @inline(__always)
    mutating func release(_ segment: Int32, of s: ConnectionRef) {
        s.pointee.buffersHeld = 0
        buffersHeld -= 1
    }

    mutating func waitForBuffers(_ s: ConnectionRef) {}

    @inline(__always) mutating func afterBatch(core: URingCore) throws(URingError) {}

    mutating func teardown(core: URingCore) {}
}
