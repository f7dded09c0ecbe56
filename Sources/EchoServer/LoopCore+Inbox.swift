import SocketPool
import URing

// The ring's inbox: writes, closes and aborts from other threads (``ConnectionHandle``), applied on
// the ring's thread at the top of a loop turn, in the order each writer pushed them.
extension LoopCore {
    /// Whether the inbox has records (one atomic load per loop turn).
    @inline(__always)
    var inboxNotified: Bool { remote.inbox.notified.load(ordering: .acquiring) }

    /// Applies every record pushed so far. A write to a connection that has closed since gives its
    /// reservations back and is dropped, as any write to a closing connection is.
    func drainInbox() throws(URingError) {
        remote.inbox.notified.store(false, ordering: .releasing)
        try remote.inbox.drainRecords { (word, value, bytes) throws(URingError) in
            let index = Int(word)
            let epoch = value & (1 << 56 - 1)
            let operation = RemoteConnections.Operation(rawValue: value >> 56)
            guard let c = sessions.record(at: index), c.pointee.session.epoch == epoch,
                c.pointee.lifecycle.acceptsOutput
            else {
                if operation == .write {
                    remote.returnRoom(index, bytes.count)
                    remote.returnBuffers(remote.buffers(for: bytes.count))
                }
                return
            }
            switch operation {
            case .write:
                // Room and buffers were reserved by the writer: this cannot be refused.
                _ = queue.write(bytes, to: c, coalesce: true, reserved: remote.buffers(for: bytes.count))
                c.pointee.remoteQueued += bytes.count
                touch(c)
            case .close:
                if c.pointee.lifecycle.closeRequested(abort: false) { touch(c) }
            case .abort:
                if c.pointee.lifecycle.closeRequested(abort: true) { touch(c) }
            case nil:
                break
            }
        }
    }
}
