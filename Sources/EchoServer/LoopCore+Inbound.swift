import SocketPool
import URing

// Received bytes a handler holds for a consumer (an async connection's inbound): segments of the
// send queue's table, linked in the connection's record, released as they are consumed. They count
// in the connection's buffer share, so a consumer that lags pauses the connection's receiving.
extension LoopCore {
    /// Keeps segment `segment` of `count` bytes at the end of `c`'s inbound list.
    @inline(__always)
    func hold(_ segment: Int32, count: Int, _ c: ConnectionRef) {
        queue.length[Int(segment)] = Int32(count)
        queue.next[Int(segment)] = -1
        if c.pointee.inbound.tail >= 0 {
            queue.next[Int(c.pointee.inbound.tail)] = segment
        } else {
            c.pointee.inbound.head = segment
        }
        c.pointee.inbound.tail = segment
    }

    /// Releases the segment being consumed, if any (its consumer is done with it).
    @inline(__always)
    func releaseCurrent(_ c: ConnectionRef) {
        let current = c.pointee.inbound.current
        guard current >= 0 else { return }
        c.pointee.inbound.current = -1
        releaseReceived(current, c)
        c.pointee.lastActivity = now  // its consumer moves: not idle
        touch(c)  // receiving may resume
    }

    /// Takes the first held segment as the one being consumed: its bytes, or nil when none is held.
    @inline(__always)
    func takeInbound(_ c: ConnectionRef) -> UnsafeRawBufferPointer? {
        let head = c.pointee.inbound.head
        guard head >= 0 else { return nil }
        c.pointee.inbound.head = queue.next[Int(head)]
        if c.pointee.inbound.head < 0 { c.pointee.inbound.tail = -1 }
        c.pointee.inbound.current = head
        return UnsafeRawBufferPointer(start: queue.base(head, c), count: Int(queue.length[Int(head)]))
    }

    /// Sends the segment being consumed as it is, after what is queued: zero copy (its buffer
    /// goes back once sent).
    @inline(__always)
    func sendCurrent(_ c: ConnectionRef) {
        let current = c.pointee.inbound.current
        guard current >= 0 else { return }
        c.pointee.inbound.current = -1
        queue.insert(current, count: Int(queue.length[Int(current)]), after: c.pointee.output.tail, in: c)
        touch(c)
    }
}
