import SocketPool
import URing

// A connection's completions: accepted, received, sent, cancelled, closed. Each ends by letting
// the handler's requests take effect (afterCallback).
extension CompletionLoop where Receiver: ~Copyable {
    func onAccept(_ c: Completion, _ tag: RequestTag, listener: UInt8) throws(URingError) {
        let (accepted, ended) = listener == 0 ? try acceptor.onAccept(c, tag, core) : try secondary!.onAccept(c, tag, core)
        if let accepted {
            if core.stopping {
                try Acceptor.closeRejected(accepted, core)
            } else if core.admits(listener), let handle = core.sessions.acquire(file: accepted.file, slotGeneration: accepted.lease?.generation ?? 0),
                let s = core.sessions.resolve(handle)
            {
                s.pointee.lastActivity = core.now
                s.pointee.listener = listener
                if listener != 0 { core.endpointSessions.append(s.pointee.index) }
                handler.opened(Connection(core.connectionID(s), core))
                try afterCallback(s)
            } else {
                if listener == 0 { core.stats.rejected &+= 1 }
                try Acceptor.closeRejected(accepted, core)
            }
        }
        if listener == 0 { try acceptor.rearmIfEnded(ended, core) } else { try secondary!.rearmIfEnded(ended, core) }
    }

    /// After a close or on a tick: post the accepts a pause or a full slot table held back.
    func resumeAccepting() throws(URingError) {
        try acceptor.resumeIfPaused(core)
        try secondary?.resumeIfPaused(core)
    }

    func onReceive(_ c: Completion, _ s: UnsafeMutablePointer<Session>) throws(URingError) {
        if receiver.ended(c) { s.pointee.pending.remove(.recv) }
        guard c.result > 0 else {
            receiver.discard(c)
            return try onReceiveEnded(c, s)
        }
        // One segment, or a bundle's several: each reaches the handler in turn.
        let parts = receiver.parts(c)
        if parts > 1 { core.stats.receiveBundles &+= 1 }
        var delivered = false
        for part in 0..<parts {
            guard let (bytes, segment) = receiver.take(c, s, part: part) else {
                // The bytes could not be held (an incremental ring's slice table ran out): the
                // stream has a hole, so the connection ends.
                core.stats.errors &+= 1
                return try core.beginClose(s)
            }
            core.stats.bytesIn &+= UInt64(bytes.count)
            s.pointee.bytesIn &+= UInt64(bytes.count)
            guard s.pointee.state == .open && !s.pointee.closeRequested && !s.pointee.abortRequested else {
                // Bytes after we decided to close are dropped with the connection.
                receiver.release(segment, of: s)
                continue
            }
            deliver(bytes, segment, s)
            delivered = true
        }
        s.pointee.lastActivity = core.now
        if delivered { try afterCallback(s) } else { try core.closeIfDone(s) }
    }

    /// Hands received bytes to the handler and queues its in-place reply.
    @inline(__always)
    func deliver(_ bytes: UnsafeMutableRawBufferPointer, _ segment: Int32, _ s: UnsafeMutablePointer<Session>) {
        // The in-place reply goes in after what was queued before the call, ahead of its writes.
        let anchor = s.pointee.queueTail
        core.replyAnchorSession = Int32(bitPattern: s.pointee.index)
        core.replyAnchor = anchor
        let reply = handler.received(bytes, connection: Connection(core.connectionID(s), core))
        core.replyAnchorSession = -1
        let count = min(max(reply.count, 0), bytes.count)
        if count > 0 && s.pointee.state != .closing && !s.pointee.abortRequested {
            // Behind a queue (the peer reads slower than it writes), a small reply is copied onto
            // the queue's last outbound buffer and its receive buffer goes straight back: a client
            // trickling 1-byte segments then costs bytes, not a whole buffer per byte.
            if anchor >= 0 && s.pointee.queueTail == anchor && count <= core.queue.outboundSize / 4
                && core.queue.write(UnsafeRawBufferPointer(rebasing: bytes[0..<count]), to: s, coalesce: true)
            {
                receiver.release(segment, of: s)
            } else {
                core.queue.insert(segment, count: count, after: anchor, in: s)
            }
        } else {
            receiver.release(segment, of: s)
        }
        if reply.close { s.pointee.closeRequested = true }
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
            // Wait for buffers to come back: `free` may still count buffers the kernel has taken
            // and not yet reported. The batch's end re-arms as many waiters as there are buffers.
            if core.wantsReceive(s) {
                core.stats.receiveRearms &+= 1
                receiver.waitForBuffers(s)
            }
            try core.closeIfDone(s)
        case .canceled:
            try settleAndReceive(s)
        case let error where receiver.fallBack(after: error, core: core):
            try settleAndReceive(s)
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
        var remaining = sent  // a short send continues where it stopped
        while remaining > 0 {
            let finished = core.queue.consume(s, &remaining)
            if finished < 0 { break }
            release(finished, of: s)
        }
        if s.pointee.queueHead >= 0 { try core.postSend(s) }
        if s.pointee.wantsWritable && s.pointee.queuedBytes <= core.lowWater && s.pointee.state != .closing {
            s.pointee.wantsWritable = false
            handler.writable(Connection(core.connectionID(s), core))
        }
        try afterCallback(s)
    }

    func onCancel(_ c: Completion, _ s: UnsafeMutablePointer<Session>, _ request: PendingRequests) throws(URingError) {
        s.pointee.pending.remove(request)
        try settleAndReceive(s)
    }

    func onClose(_ c: Completion, _ s: UnsafeMutablePointer<Session>) throws(URingError) {
        s.pointee.pending.remove(.close)
        if c.result < 0 { core.logger.debug("close failed: \(c.error!)") }
        // Buffers still queued for sending go back.
        var segment = core.queue.detachAll(s)
        while segment >= 0 {
            let following = core.queue.next[Int(segment)]
            release(segment, of: s)
            segment = following
        }
        let id = core.connectionID(s)
        let handle = s.pointee.handle
        if s.pointee.file.isFixed {
            core.slots?.release(SlotLease(index: UInt32(bitPattern: s.pointee.file.raw), generation: s.pointee.slotGeneration))
        }
        s.pointee.state = ConnectionLifecycle.next(.closing, .closeCompleted)
        // Before the release: unpooled, it frees the session.
        if s.pointee.listener == 0 {
            core.stats.closed &+= 1
        } else if let i = core.endpointSessions.firstIndex(of: s.pointee.index) {
            core.endpointSessions.remove(at: i)
            core.endpointClosedBytesIn &+= s.pointee.bytesIn
            core.endpointClosedBytesOut &+= s.pointee.bytesOut
        }
        if !core.sessions.release(handle) {
            core.logger.critical("\(handle) closed with requests in flight: \(s.pointee.pending)")
        }
        handler.closed(id)
        try flushDirty()
        try resumeAccepting()
    }

    /// Gives a sent or dropped segment back to whoever owns its memory.
    @inline(__always)
    func release(_ segment: Int32, of s: UnsafeMutablePointer<Session>) {
        if core.queue.isOutbound(segment) { core.queue.freeOutbound(segment, of: s) } else { receiver.release(segment, of: s) }
    }

    /// After a handler callback on `s` (or a change to its queue): carry out what the handler asked
    /// of any connection, keep `s` sending, and keep it receiving within its bounds.
    @inline(__always)
    func afterCallback(_ s: UnsafeMutablePointer<Session>) throws(URingError) {
        try flushDirty()
        try settleAndReceive(s)
    }

    /// Carries out what a callback asked of the connections it touched (writes, closes, pauses).
    @inline(__always)
    func flushDirty() throws(URingError) {
        while let s = core.popDirty() { try settleAndReceive(s) }
    }

    /// Sends what `s` has queued, closes it if asked, and keeps it receiving within its bounds.
    @inline(__always)
    func settleAndReceive(_ s: UnsafeMutablePointer<Session>) throws(URingError) {
        try core.settle(s)
        guard s.pointee.state == .open else { return }
        // Bytes, and buffers: a peer that trickles small requests and never reads could otherwise
        // pin a whole provided or outbound buffer per few bytes.
        let overBound = s.pointee.queuedBytes >= core.maxPending
            || s.pointee.buffersHeld >= receiver.maxHeldPerConnection || s.pointee.outboundHeld >= core.maxOutboundHeld
        if overBound {
            if !s.pointee.pausedForBound {
                // Bounded memory per connection: stop receiving until the peer reads.
                s.pointee.pausedForBound = true
                core.stats.receivePauses &+= 1
                try core.cancel(s, .recv)
            }
        } else if s.pointee.pausedForBound && s.pointee.queuedBytes <= core.maxPending / 2
            && s.pointee.buffersHeld <= receiver.maxHeldPerConnection / 2
            && s.pointee.outboundHeld <= core.maxOutboundHeld / 2
        {
            s.pointee.pausedForBound = false
        }
        if s.pointee.pausedByHandler { try core.cancel(s, .recv) }
        if core.wantsReceive(s) {
            if s.pointee.bytesIn > 0 { core.stats.receiveRearms &+= 1 }
            try receiver.armOrWait(s, core: core)
        }
    }

}
