import SocketPool
import URing

// A connection's completions: accepted, received, sent, cancelled, closed. Each is an event on the
// connection's lifecycle; then `settle` posts what its state calls for, and `settleTouched` does
// the same for every connection a handler callback wrote to, closed or paused.
extension CompletionLoop where Receiver: ~Copyable {
    func onAccept(_ completion: Completion, _ tag: RequestTag, listener: UInt8, into: SharedRequest.AcceptInto)
        throws(URingError)
    {
        let (accepted, ended) =
            listener == 0
            ? try acceptor.onAccept(completion, tag, into: into, core)
            : try sides[side(listener)].onAccept(completion, tag, into: into, core)
        if let accepted {
            if core.stopping {
                try Acceptor.closeRejected(accepted, core)
            } else if core.admits(listener), let c = core.sessions.acquire(file: accepted.file, slot: accepted.slot) {
                c.pointee.lastActivity = core.now
                c.pointee.listener = listener
                c.pointee.announced = true
                core.tables.opened(c.pointee.session.index, epoch: c.pointee.session.epoch, maxOutput: core.maxOutput)
                if listener != 0 { core.opened(listener, c) }
                handler.opened(Connection(core.connectionID(c), core))
                try afterCallback(c)
            } else {
                if listener == 0 { core.stats.rejected &+= 1 }
                try Acceptor.closeRejected(accepted, core)
            }
        }
        if listener == 0 { try acceptor.rearmIfEnded(ended, core) } else { try sides[side(listener)].rearmIfEnded(ended, core) }
    }

    /// One of an outbound connection's connect requests completed (its socket, its connect, the
    /// connect's timeout). Once none is in flight: connected, the connection opens as an accepted
    /// one does; otherwise it closes, and its handler hears why (``ConnectionHandler/connectFailed(_:_:ring:)``).
    func onConnecting(_ completion: Completion, _ c: ConnectionRef, _ request: PendingRequests) throws(URingError) {
        c.pointee.lifecycle.ended(request)
        switch request {
        case .socket:
            // A failed socket breaks the chain: its error is the cause, whatever the others say.
            if completion.result < 0 { c.pointee.connectError = completion.result }
        case .connect:
            if completion.result < 0 && c.pointee.connectError == 0 { c.pointee.connectError = completion.result }
        default:
            if completion.error == .timerExpired { c.pointee.connectTimedOut = true }
        }
        guard c.pointee.lifecycle.pending.isDisjoint(with: .connecting) else { return }
        if c.pointee.lifecycle.phase == .connecting && c.pointee.connectError == 0 && !c.pointee.connectTimedOut {
            c.pointee.lifecycle.connected()
            c.pointee.lastActivity = core.now
            c.pointee.lastProgress = core.now
            core.stats.connects &+= 1
            core.tables.opened(c.pointee.session.index, epoch: c.pointee.session.epoch, maxOutput: core.maxOutput)
            c.pointee.announced = true
            handler.opened(Connection(core.connectionID(c), core))
            return try afterCallback(c)
        }
        c.pointee.lifecycle.failed()
        try settle(c)
    }

    /// After a close or on a tick: post the accepts a pause or a full slot table held back.
    func resumeAccepting() throws(URingError) {
        try acceptor.resumeIfPaused(core)
        for i in 0..<sideCount { try sides[i].resumeIfPaused(core) }
    }

    func onReceive(_ completion: Completion, _ c: ConnectionRef) throws(URingError) {
        if receiver.ended(completion) { c.pointee.lifecycle.ended(.recv) }
        guard completion.result > 0 else {
            receiver.discard(completion)
            return try onReceiveEnded(completion, c)
        }
        // One segment, or a bundle's several: each reaches the handler in turn.
        let parts = receiver.parts(completion)
        if parts > 1 { core.stats.receiveBundles &+= 1 }
        var delivered = false
        for part in 0..<parts {
            guard let (bytes, segment) = receiver.take(completion, c, part: part) else {
                // The bytes could not be held (an incremental ring's slice table ran out): the
                // stream has a hole, so the connection ends, with a reset.
                core.stats.errors &+= 1
                c.pointee.lifecycle.failed(reset: true)
                return try settle(c)
            }
            core.stats.bytesIn &+= UInt64(bytes.count)
            c.pointee.bytesIn &+= UInt64(bytes.count)
            guard c.pointee.lifecycle.acceptsInput else {
                // Bytes after we decided to close are dropped with the connection.
                receiver.release(segment, of: c)
                continue
            }
            deliver(bytes, segment, c)
            delivered = true
        }
        c.pointee.lastActivity = core.now
        if delivered { try afterCallback(c) } else { try settle(c) }
    }

    /// Hands received bytes to the handler and queues its in-place reply.
    @inline(__always)
    func deliver(_ bytes: UnsafeMutableRawBufferPointer, _ segment: Int32, _ c: ConnectionRef) {
        // The in-place reply goes in after what was queued before the call, ahead of its writes.
        let anchor = c.pointee.output.tail
        core.replyAnchorSession = Int32(bitPattern: c.pointee.session.lease.index)
        core.replyAnchor = anchor
        let reply = handler.received(bytes, connection: Connection(core.connectionID(c), core))
        core.replyAnchorSession = -1
        if core.holdReceived {
            // The handler keeps the bytes for a consumer (an async connection): held, not replied.
            core.holdReceived = false
            core.hold(segment, count: bytes.count, c)
            return
        }
        let count = min(max(reply.count, 0), bytes.count)
        if count > 0 && c.pointee.lifecycle.sendsReplies {
            // Behind a queue (the peer reads slower than it writes), a small reply is copied onto
            // the queue's last outbound buffer and its receive buffer goes straight back: a client
            // trickling 1-byte segments then costs bytes, not a whole buffer per byte.
            if anchor >= 0 && c.pointee.output.tail == anchor && count <= core.queue.outboundSize / 4
                && core.queue.write(UnsafeRawBufferPointer(rebasing: bytes[0..<count]), to: c, coalesce: true)
            {
                receiver.release(segment, of: c)
            } else {
                core.queue.insert(segment, count: count, after: anchor, in: c)
            }
        } else {
            receiver.release(segment, of: c)
        }
        if reply.close { _ = c.pointee.lifecycle.closeRequested(abort: false) }
    }

    /// End of stream, an error, or a receive that simply ended (cancelled, out of buffers).
    func onReceiveEnded(_ completion: Completion, _ c: ConnectionRef) throws(URingError) {
        if completion.result == 0 {
            // The peer finished sending: the handler hears of it (by default it closes once what
            // is queued is sent).
            c.pointee.lifecycle.peerClosed()
            handler.inputEnded(Connection(core.connectionID(c), core))
            return try afterCallback(c)
        }
        switch completion.error! {
        case .noBufferSpace:
            // The buffer ring ran dry; the data (or the EOF) waits in the socket. Wait for buffers
            // to come back: `free` may still count buffers the kernel has taken and not yet
            // reported. The batch's end re-arms as many waiters as there are buffers.
            core.stats.bufferShortages &+= 1
            if c.pointee.lifecycle.wantsReceive {
                core.stats.receiveRearms &+= 1
                receiver.waitForBuffers(c)
            }
        case .canceled:
            break
        case let error where receiver.fallBack(after: error, core: core):
            break
        default:
            // Reset or another error: nothing more will be read or written.
            core.stats.errors &+= 1
            c.pointee.lifecycle.failed(abnormal: true)
        }
        try settle(c)
    }

    func onSend(_ completion: Completion, _ c: ConnectionRef) throws(URingError) {
        c.pointee.lifecycle.ended(.send)
        if c.pointee.lifecycle.phase == .closing { return try settle(c) }
        guard completion.result >= 0 else {
            core.stats.errors &+= 1
            c.pointee.lifecycle.failed(abnormal: true)
            return try settle(c)
        }
        let sent = Int(completion.result)
        core.stats.bytesOut &+= UInt64(sent)
        c.pointee.bytesOut &+= UInt64(sent)
        if sent > 0 {
            // The peer took bytes: progress for the idle and the stall timeouts.
            c.pointee.lastActivity = core.now
            c.pointee.lastProgress = core.now
        }
        if c.pointee.remoteQueued > 0 {
            let returned = min(sent, c.pointee.remoteQueued)
            c.pointee.remoteQueued -= returned
            core.remote.returnRoom(c.pointee.session.index, returned, epoch: c.pointee.session.epoch)
        }
        var remaining = sent  // a short send continues where it stopped
        while remaining > 0 {
            let finished = core.queue.consume(c, &remaining)
            if finished < 0 { break }
            release(finished, of: c)
        }
        // The next send goes out before the handler hears of the room (measured cheaper than
        // leaving it to settle).
        if c.pointee.output.head >= 0 {
            c.pointee.lifecycle.posted(.send)
            try core.postSend(c)
        }
        if c.pointee.output.bytes <= core.lowWater && c.pointee.lifecycle.takeWritable() {
            handler.writable(Connection(core.connectionID(c), core))
        }
        try afterCallback(c)
    }

    func onCancel(_ completion: Completion, _ c: ConnectionRef, _ request: PendingRequests) throws(URingError) {
        c.pointee.lifecycle.ended(request)
        try settle(c)
    }

    /// The output's shutdown completed: the FIN is out (or the socket is gone, which the receive
    /// learns too). The connection closes once the peer's FIN comes.
    func onShutdown(_ completion: Completion, _ c: ConnectionRef) throws(URingError) {
        c.pointee.lifecycle.shutdownCompleted()
        if completion.result < 0 { core.logger.debug("shutdown failed: \(completion.error!)") }
        try settle(c)
    }

    func onClose(_ completion: Completion, _ c: ConnectionRef) throws(URingError) {
        if completion.result < 0 { core.logger.debug("close failed: \(completion.error!)") }
        try recycle(c)
    }

    /// The connections whose quiet close was submitted while the last completion was handled:
    /// recycled now that nothing on the stack holds their records. (A quiet close that fails still
    /// posts its completion, which finds the session recycled and is counted stale.)
    func recycleClosed() throws(URingError) {
        while core.closedCount > 0 {
            core.closedCount -= 1
            guard let c = core.sessions.record(at: Int(core.closedIndices[core.closedCount])) else { continue }
            try recycle(c)
        }
    }

    /// The connection is closed: its queued buffers, its slot and its session go back, and the
    /// handler hears of it.
    func recycle(_ c: ConnectionRef) throws(URingError) {
        let end = core.giveBackHeld(c) { release($0, of: c) }
        let id = core.connectionID(c)
        if let slot = c.pointee.session.slot { core.slots?.release(slot) }
        // Before the release: unpooled, it frees the record.
        let failure = core.retired(c)
        let pending = c.pointee.lifecycle.pending
        if !pending.isEmpty || !core.sessions.release(c) {
            core.logger.critical("\(id) closed with requests in flight: \(pending)")
        }
        if let failure {
            handler.connectFailed(id, failure, ring: RingContext(core))
        } else {
            handler.closed(id, end: end, ring: RingContext(core))
        }
        try settleTouched()
        try resumeAccepting()
    }

    /// Gives a sent or dropped segment back to whoever owns its memory.
    @inline(__always)
    func release(_ segment: Int32, of c: ConnectionRef) {
        if core.queue.isOutbound(segment) { core.queue.freeOutbound(segment, of: c) } else { receiver.release(segment, of: c) }
    }

    /// After a handler callback on `c`: carry out what the handler asked of any connection, then
    /// settle `c`.
    @inline(__always)
    func afterCallback(_ c: ConnectionRef) throws(URingError) {
        try settleTouched()
        try settle(c)
    }

    /// Settles every connection a callback touched (wrote to, closed, paused).
    @inline(__always)
    func settleTouched() throws(URingError) {
        while let c = core.popTouched() { try settle(c) }
    }

    /// After any event on `c`: post what its lifecycle now calls for (cancels, the send, the close)
    /// and, if it wants to receive, let the receive path arm a receive or make it wait.
    @inline(__always)
    func settle(_ c: ConnectionRef) throws(URingError) {
        let effects = c.pointee.lifecycle.settle(c.pointee.holdings, bounds)
        guard !effects.isEmpty else { return }
        try core.post(effects, c)
        if effects.contains(.receive) {
            if c.pointee.bytesIn > 0 { core.stats.receiveRearms &+= 1 }
            try receiver.armOrWait(c, core: core)
        }
    }
}
