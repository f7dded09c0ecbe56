import SocketPool
import URing

/// The `GetQueuedCompletionStatus` loop: one ring, one thread, one handler.
///
/// Each turn submits what was prepared, waits for at least one completion, then dispatches every
/// ready completion by its tag. A connection's own requests (receive, send, cancels, close) carry
/// the connection's index and generation, so a completion for a connection that has since been
/// recycled is counted as stale and dropped; accepts and rejected closes use the shared context
/// slab; the timer, the wake-up and mail have fixed tags.
///
/// Generic over its handler and its receive strategy so both specialise: no existential, no
/// closure per request. Everything here is confined to the loop's thread.
final class CompletionLoop<Handler: ConnectionHandler, Receiver: ReceivePath & ~Copyable> {
    let core: LoopCore
    var handler: Handler
    var receiver: Receiver
    var acceptor: Acceptor
    var housekeeping: Housekeeping

    init(
        core: LoopCore, handler: Handler, receiver: consuming Receiver, listener: Int32,
        publish: @escaping (ServerStatistics, Bool) -> Void
    ) {
        self.core = core
        self.handler = handler
        self.receiver = receiver
        acceptor = Acceptor(listener: listener, core: core)
        housekeeping = Housekeeping(core: core, publish: publish)
        self.handler.start(capacity: core.sessions.capacity)
    }

    // MARK: The loop

    func run() throws(URingError) {
        core.now = monotonicNanoseconds()
        try housekeeping.armWake(core)
        try housekeeping.armTick(core)
        try acceptor.arm(core)
        while true {
            if core.stopping {
                if core.sessions.statistics.inUse == 0 && core.contexts.statistics.inUse == 0 { break }
                if core.now > housekeeping.stopDeadline {
                    core.logger.warning("stop timeout: closing \(core.sessions.statistics.inUse) connections with the ring")
                    break
                }
            }
            try core.ring.submitAndWait(1)
            core.now = monotonicNanoseconds()
            try core.ring.forEachCompletion { (c: Completion) throws(URingError) in try dispatch(c) }
            try receiver.afterBatch(core: core)
        }
        teardown()
    }

    func dispatch(_ c: Completion) throws(URingError) {
        let tag = RequestTag(rawValue: c.tag)
        if let request = PendingRequests(tag.kind) {
            // A connection's own request: resolve the connection by the tag's index and generation.
            guard let s = core.sessions.resolve(SessionHandle(index: tag.index, generation: tag.generation)),
                s.pointee.pending.contains(request)
            else {
                core.stats.staleCompletions &+= 1
                receiver.discard(c)
                return
            }
            switch request {
            case .recv: try onReceive(c, s)
            case .send: try onSend(c, s)
            case .close: try onClose(c, s)
            default: try onCancel(c, s, request)
            }
            return
        }
        switch tag.kind {
        case .accept: try onAccept(c, tag)
        case .closeRejected:
            Acceptor.onRejectedClosed(tag, core)
            try acceptor.resumeIfPaused(core)
        case .timeout: try onTick()
        case .wake: if tag.generation == 0 { try onWake(c) }  // 1: the cancel of the accepts at stop
        case .message:
            if tag.generation == 1 { try deliverMail(from: Int(tag.index)) } else { core.onMessageSent(c, tag) }
        default: core.stats.staleCompletions &+= 1
        }
    }

    // MARK: Connections

    func onAccept(_ c: Completion, _ tag: RequestTag) throws(URingError) {
        let (accepted, ended) = try acceptor.onAccept(c, tag, core)
        if let accepted {
            if core.stopping {
                try Acceptor.closeRejected(accepted, core)
            } else if let handle = core.sessions.acquire(file: accepted.file, slotGeneration: accepted.lease?.generation ?? 0),
                let s = core.sessions.resolve(handle)
            {
                s.pointee.lastActivity = core.now
                handler.opened(Connection(core.connectionID(s), core))
                try afterCallback(s)
            } else {
                core.stats.rejected &+= 1
                try Acceptor.closeRejected(accepted, core)
            }
        }
        try acceptor.rearmIfEnded(ended, core)
    }

    func onReceive(_ c: Completion, _ s: UnsafeMutablePointer<Session>) throws(URingError) {
        if receiver.ended(c) { s.pointee.pending.remove(.recv) }
        guard c.result > 0 else {
            receiver.discard(c)
            return try onReceiveEnded(c, s)
        }
        let (bytes, segment) = receiver.take(c, s)
        core.stats.bytesIn &+= UInt64(bytes.count)
        s.pointee.bytesIn &+= UInt64(bytes.count)
        s.pointee.lastActivity = core.now
        guard s.pointee.state == .open && !s.pointee.closeRequested else {
            // Bytes after we decided to close are dropped with the connection.
            receiver.release(segment, of: s)
            return try core.closeIfDone(s)
        }
        // The in-place reply goes in after what was queued before the call, ahead of its writes.
        let anchor = s.pointee.queueTail
        core.replyAnchorSession = Int32(bitPattern: s.pointee.index)
        core.replyAnchor = anchor
        let reply = handler.received(bytes, connection: Connection(core.connectionID(s), core))
        core.replyAnchorSession = -1
        let count = min(max(reply.count, 0), bytes.count)
        if count > 0 && s.pointee.state != .closing && !s.pointee.abortRequested {
            core.queue.insert(segment, count: count, after: anchor, in: s)
        } else {
            receiver.release(segment, of: s)
        }
        if reply.close { s.pointee.closeRequested = true }
        try afterCallback(s)
    }

    /// End of stream, an error, or a receive that simply ended (cancelled, out of buffers).
    func onReceiveEnded(_ c: Completion, _ s: UnsafeMutablePointer<Session>) throws(URingError) {
        if c.result == 0 {
            // Peer half-closed: send what is queued, then close.
            if s.pointee.state == .open { s.pointee.state = ConnectionLifecycle.next(.open, .peerClosed) }
            return try core.closeIfDone(s)
        }
        switch c.error! {
        case .noBufferSpace:
            // The buffer ring ran dry; the data (or the EOF) waits in the socket. Receive again as
            // soon as buffers come back.
            core.stats.bufferShortages &+= 1
            if core.wantsReceive(s) {
                core.stats.receiveRearms &+= 1
                try receiver.armOrWait(s, core: core)
            }
            try core.closeIfDone(s)
        case .canceled:
            try core.closeIfDone(s)
            if core.wantsReceive(s) { try receiver.armOrWait(s, core: core) }
        default:
            // Reset or another error: nothing more will be read or written.
            core.stats.errors &+= 1
            try core.beginClose(s)
        }
    }

    func onSend(_ c: Completion, _ s: UnsafeMutablePointer<Session>) throws(URingError) {
        s.pointee.pending.remove(.send)
        if s.pointee.state == .closing { return try core.finishCloseIfIdle(s) }
        guard c.result >= 0 else {
            core.stats.errors &+= 1
            return try core.beginClose(s)
        }
        let sent = Int(c.result)
        core.stats.bytesOut &+= UInt64(sent)
        s.pointee.bytesOut &+= UInt64(sent)
        let finished = core.queue.advance(s, sent: sent)  // a short send continues where it stopped
        if finished >= 0 { release(finished, of: s) }
        if s.pointee.queueHead >= 0 { try core.postSend(s) }
        if s.pointee.wantsWritable && s.pointee.queuedBytes <= core.lowWater && s.pointee.state != .closing {
            s.pointee.wantsWritable = false
            handler.writable(Connection(core.connectionID(s), core))
        }
        try afterCallback(s)
    }

    func onCancel(_ c: Completion, _ s: UnsafeMutablePointer<Session>, _ request: PendingRequests) throws(URingError) {
        s.pointee.pending.remove(request)
        try core.closeIfDone(s)
        if core.wantsReceive(s) { try receiver.armOrWait(s, core: core) }
    }

    func onClose(_ c: Completion, _ s: UnsafeMutablePointer<Session>) throws(URingError) {
        s.pointee.pending.remove(.close)
        if c.result < 0 { core.logger.debug("close failed: \(c.error!)") }
        // Buffers still queued for sending go back.
        core.queue.drain(s) { id in release(id, of: s) }
        let id = core.connectionID(s)
        let handle = s.pointee.handle
        if s.pointee.file.isFixed {
            core.slots?.release(SlotLease(index: UInt32(bitPattern: s.pointee.file.raw), generation: s.pointee.slotGeneration))
        }
        s.pointee.state = ConnectionLifecycle.next(.closing, .closeCompleted)
        if !core.sessions.release(handle) {
            core.logger.critical("\(handle) closed with requests in flight: \(s.pointee.pending)")
        }
        core.stats.closed &+= 1
        handler.closed(id)
        try core.flushDirty()
        try acceptor.resumeIfPaused(core)
    }

    /// Gives a sent or dropped segment back to whoever owns its memory.
    @inline(__always)
    func release(_ segment: Int32, of s: UnsafeMutablePointer<Session>) {
        if core.queue.isOutbound(segment) { core.queue.freeOutbound(segment) } else { receiver.release(segment, of: s) }
    }

    /// After a handler callback on `s` (or a change to its queue): carry out what the handler asked
    /// of any connection, keep `s` sending, and keep it receiving within its bounds.
    @inline(__always)
    func afterCallback(_ s: UnsafeMutablePointer<Session>) throws(URingError) {
        try core.flushDirty()
        try core.settle(s)
        guard s.pointee.state == .open else { return }
        let overBound = s.pointee.queuedBytes >= core.maxPending
            || s.pointee.buffersHeld >= receiver.maxHeldPerConnection
        if overBound {
            if !s.pointee.pausedForBound {
                // Bounded memory per connection: stop receiving until the peer reads.
                s.pointee.pausedForBound = true
                core.stats.receivePauses &+= 1
                try core.cancel(s, .recv)
            }
        } else if s.pointee.pausedForBound && s.pointee.queuedBytes <= core.maxPending / 2
            && s.pointee.buffersHeld <= receiver.maxHeldPerConnection / 2
        {
            s.pointee.pausedForBound = false
        }
        if core.wantsReceive(s) {
            if s.pointee.bytesIn > 0 { core.stats.receiveRearms &+= 1 }
            try receiver.armOrWait(s, core: core)
        }
    }

    // MARK: Housekeeping, stop and mail

    func onTick() throws(URingError) {
        housekeeping.ticks &+= 1
        if !core.stopping {
            try housekeeping.sweepIdle(core)
            try acceptor.resumeIfPaused(core)
        }
        let snapshot = housekeeping.publishStatistics(core, buffersHeld: receiver.buffersHeld)
        if housekeeping.ticks % 40 == 0 { core.logger.debug("statistics: \(snapshot)") }
        try housekeeping.armTick(core)
    }

    func onWake(_ c: Completion) throws(URingError) {
        if core.mailboxes.stopRequested.load(ordering: .acquiring) {
            try housekeeping.beginStop(core, listener: acceptor.listener, acceptsInFlight: acceptor.inFlight)
        }
        for from in 0..<core.mailboxes.count { try deliverMail(from: from) }
        if !core.stopping { try housekeeping.armWake(core) }
    }

    /// Hands every message in the mailbox from ring `from` to the handler, in order.
    func deliverMail(from: Int) throws(URingError) {
        let box = core.mailboxes.box(from: from, to: core.ringIndex)
        guard box.notified.exchange(false, ordering: .acquiringAndReleasing) else { return }
        try box.drain { (value, bytes) throws(URingError) in
            core.stats.delivered &+= 1
            guard !core.stopping else { return }
            handler.received(message: RingMessage(from: from, value: value, bytes: bytes), ring: RingContext(core))
            try core.flushDirty()
        }
    }

    func teardown() {
        // Whatever is still open after the stop timeout: plain fds are closed here, slots when the
        // table is unregistered (and the ring exits).
        core.mailboxes.ringDescriptors[core.ringIndex].value.store(-1, ordering: .releasing)
        for i in 0..<core.sessions.capacity {
            if let s = core.sessions.session(at: i), !s.pointee.file.isFixed { _ = try? Sockets.close(s.pointee.file.raw) }
        }
        receiver.teardown(core: core)
        if core.useSlots { try? core.ring.unregisterFiles() }
        let final = housekeeping.publishStatistics(core, buffersHeld: receiver.buffersHeld)
        core.logger.info("ring stopped: \(final)")
    }
}
