import Glibc
import SocketPool
import URing

/// The loop running on this thread, if any (a thread-specific value, set while a ring's loop runs):
/// how a write from a ring's own callbacks or tasks to another ring's connection finds the ring
/// that can wake the other with `MSG_RING`.
private let currentLoopKey: pthread_key_t = {
    var key = pthread_key_t()
    precondition(pthread_key_create(&key, nil) == 0, "pthread_key_create")
    return key
}()

extension LoopCore {
    /// The loop running on the calling thread, or nil.
    static var current: LoopCore? {
        guard let pointer = pthread_getspecific(currentLoopKey) else { return nil }
        return Unmanaged<LoopCore>.fromOpaque(pointer).takeUnretainedValue()
    }

    /// Marks this loop as the calling thread's (nil: none), for the length of its run.
    static func setCurrent(_ core: LoopCore?) {
        pthread_setspecific(currentLoopKey, core.map { UnsafeRawPointer(Unmanaged.passUnretained($0).toOpaque()) })
    }
}

// The ring's inbox: writes, closes and aborts from other threads (``ConnectionHandle``), applied on
// the ring's thread at the top of a loop turn, in the order each writer pushed them.
extension LoopCore {
    /// Whether the inbox has records, or closes wait for its next drain (one atomic load per loop
    /// turn in the common case).
    @inline(__always)
    var inboxNotified: Bool {
        remote.inbox.notified.load(ordering: .acquiring) || remote.requestsPending.load(ordering: .relaxed)
            || deferredCount > 0
    }

    /// Applies every record pushed so far, then the closes that had to wait for it: those kept in
    /// the sessions' request words by callers that found the inbox full (taken before the drain,
    /// so each follows the records its caller pushed before), then those asked on this thread
    /// while the inbox held records (``requestClose(_:abort:)``). A write to a connection that has
    /// closed since gives its reservations back and is dropped, as any write to a closing
    /// connection is. Messages for the handler (``RingHandle``) go to `message`, in order with the
    /// rest.
    func drainInbox(message: (UInt64, UnsafeRawBufferPointer) throws(URingError) -> Void) throws(URingError) {
        var kept: [(index: Int, tag: UInt64, bits: UInt64)] = []
        remote.takeRequests { index, tag, bits in kept.append((index, tag, bits)) }
        var drained = false
        // An exchange, not a store: a store may pass the loads of the drain, and a record pushed
        // between them would find the mark still set and wake no one.
        _ = remote.inbox.notified.exchange(false, ordering: .acquiringAndReleasing)
        try remote.inbox.drainRecords { (word, value, bytes) throws(URingError) in
            if word == RemoteConnections.messageWord {
                try message(value, bytes)
                return
            }
            let index = Int(word)
            let epoch = value & (1 << 56 - 1)
            let operation = RemoteConnections.Operation(rawValue: value >> 56)
            drained = true
            defer { remote.pendingRecords[index].subtract(1, ordering: .releasing) }
            guard let c = sessions.record(at: index), c.pointee.session.epoch == epoch,
                c.pointee.lifecycle.acceptsOutput
            else {
                if operation == .write {
                    remote.returnRoom(index, bytes.count, epoch: epoch)
                    queue.release(remote.buffers(for: bytes.count), of: index)
                }
                return
            }
            switch operation {
            case .write:
                // Room and buffers were reserved by the writer: this cannot be refused.
                _ = queue.write(bytes, to: c, coalesce: true, reserved: remote.buffers(for: bytes.count))
                c.pointee.remoteQueued += bytes.count
                touch(c)
            case .close: apply(.close, to: connectionID(c))
            case .abort: apply(.abort, to: connectionID(c))
            case .shutdown: apply(.shutdown, to: connectionID(c))
            case nil:
                break
            }
        }
        for request in kept {
            guard let c = sessions.record(at: request.index),
                RemoteConnections.tag(c.pointee.session.epoch) == request.tag
            else { continue }
            let id = connectionID(c)
            if request.bits & RemoteConnections.Operation.abort.bit != 0 {
                apply(.abort, to: id)
            } else {
                if request.bits & RemoteConnections.Operation.shutdown.bit != 0 { apply(.shutdown, to: id) }
                if request.bits & RemoteConnections.Operation.close.bit != 0 { apply(.close, to: id) }
            }
        }
        applyDeferred()
        // Inbox space came free: writers waiting for it may go on.
        if drained { remote.wakeSharedWriters() }
    }

    /// Applies the operations deferred for connections that have no inbox records pending any more
    /// (a drain took them), in the order they were deferred; those of a connection with records
    /// still pending (pushed after the drain began: a message's callback wrote and closed) wait for
    /// the next drain. Within one connection, a shutdown goes before a close, and an abort wins.
    func applyDeferred() {
        var kept = 0
        var i = 0
        while i < deferredCount {  // not `for in`: unspecialized, its iterator allocates
            let index = Int(deferredSessions[i])
            i += 1
            let operations = deferredOperations[index]
            guard operations != 0 else { continue }  // its connection closed meanwhile
            if tables.pendingRecords[index].load(ordering: .acquiring) > 0 {
                deferredSessions[kept] = Int32(index)
                kept += 1
                continue
            }
            deferredOperations[index] = 0
            guard let c = sessions.record(at: index), c.pointee.session.epoch == deferredEpochs[index] else { continue }
            let id = connectionID(c)
            if operations & Operation.abort.rawValue != 0 {
                apply(.abort, to: id)
            } else {
                if operations & Operation.shutdown.rawValue != 0 { apply(.shutdown, to: id) }
                if operations & Operation.close.rawValue != 0 { apply(.close, to: id) }
            }
        }
        deferredCount = kept
    }
}
