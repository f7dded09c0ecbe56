import CSystemIO
import Glibc
import Logging
import SocketPool
import SystemIO

/// The epoll driver's loop: one thread, one epoll instance, one handler, the same connection
/// lifecycle (``ConnectionLifecycle``) and handler API as the io_uring loop (``CompletionLoop``).
///
/// Each turn waits for readiness (`epoll_wait`, its timeout the next tick or connect deadline),
/// then serves it: a listener accepts (`accept4`, non-blocking sockets, until it would block), the
/// wake-up eventfd brings a stop, the inbox or mail, and a connection's readiness is recorded
/// (edge-triggered: it holds until a call would block) and served. The lifecycle decides what a
/// connection does next exactly as for io_uring (``ConnectionLifecycle/settle(_:_:)``); its
/// effects are carried out here as system calls, at once: a send until the socket would block
/// (`send`, or `sendmsg` gathering queued segments), a shutdown, a close (with `SO_LINGER` 0 for a
/// reset), and a receive armed to read (`recv` into a buffer of the ring's pool) when the socket is
/// readable. A cancel ends its request at once: nothing is in flight in the kernel.
///
/// Fairness: a connection reads at most ``readBudget`` buffers per turn; one with more waiting goes
/// to the back of the ready list, served after the others.
final class EpollLoop<Handler: ConnectionHandler> {
    let core: EpollCore
    @exclusivity(unchecked) var handler: Handler
    /// Buffers to re-arm as they come back (a connection whose receive found the pool empty).
    @exclusivity(unchecked) var waiting: BufferWaitList
    /// The listeners this ring accepts on: the main one first.
    @exclusivity(unchecked) var listeners: [Listening]
    @exclusivity(unchecked) var housekeeping: Housekeeping
    let bounds: ConnectionLifecycle.Bounds
    let events: UnsafeMutablePointer<epoll_event>
    static var maxEvents: Int { 256 }
    /// Buffers one connection reads per turn before the others get theirs.
    static var readBudget: Int { 16 }
    @exclusivity(unchecked) var nextTick: UInt64 = 0
    let tickNanoseconds: UInt64
    var tornDown = false

    /// A listening socket and whether accepting on it paused (it is out of the wait set then).
    struct Listening {
        let fd: Int32
        let number: UInt8
        var paused = false
        var episodeOpen = false
    }

    init(
        core: EpollCore, handler: Handler, listeners: RingListeners, publish: @escaping (ServerStatistics, Bool) -> Void
    ) {
        self.core = core
        self.handler = handler
        waiting = BufferWaitList(sessions: core.sessions.capacity)
        self.listeners = [Listening(fd: listeners.main, number: 0)] + listeners.sides.map { Listening(fd: $0.fd, number: $0.number) }
        housekeeping = Housekeeping(core: core, publish: publish)
        let own = Handler.pausesReceivingForQueuedOutput
        bounds = .init(
            bytes: own ? core.maxPending : Int.max, buffers: core.maxHeldPerConnection,
            outbound: own ? core.maxOutboundHeld : Int32.max)
        events = .allocate(capacity: Self.maxEvents)
        tickNanoseconds = UInt64(core.configuration.tickInterval.nanoseconds)
        core.releaseReceived = { [unowned(unsafe) self] segment, c in self.release(segment, of: c) }
        self.handler.start(capacity: core.sessions.capacity)
    }

    deinit { events.deallocate() }

    // MARK: The loop

    func run() throws(SystemError) {
        core.now = Posix.monotonicNanoseconds()
        nextTick = core.now &+ tickNanoseconds
        let wakeFD = core.mailboxes.ports[core.ringIndex].wakeFD
        try core.epoll.add(wakeFD, .readable, token: ControlTag.wake.rawValue)
        for i in listeners.indices {
            NonBlocking.setNonBlocking(listeners[i].fd)
            try core.epoll.add(listeners[i].fd, .readable, token: Self.listenerToken(i))
        }
        let executor = core.mailboxes.ports[core.ringIndex].executor
        executor.attach()
        LoopCore.setCurrent(core)
        defer { executor.detach() }
        do {
            try turns(executor)
        } catch {
            LoopCore.setCurrent(nil)
            core.mailboxes.ports[core.ringIndex].exited.store(true, ordering: .releasing)
            teardown()
            throw error
        }
        LoopCore.setCurrent(nil)
        teardown()
    }

    static func listenerToken(_ i: Int) -> UInt64 { RequestTag(Lease(index: UInt32(i), generation: 0), .accept).rawValue }

    private func turns(_ executor: RingExecutor) throws(SystemError) {
        var jobs: [UnownedJob] = []
        jobs.reserveCapacity(256)
        while true {
            if core.inboxNotified {
                try core.drainInbox { (value, bytes) throws(SystemError) in
                    guard !core.stopping else { return }
                    core.stats.delivered &+= 1
                    handler.received(
                        message: RingMessage(from: RingMessage.outside, value: value, bytes: bytes), ring: RingContext(core))
                    settleTouched()
                }
                settleTouched()
            }
            if executor.hasJobs {
                executor.runJobs(into: &jobs)
                settleTouched()
            }
            serveReady()
            recycleClosed()
            if core.stopping {
                if core.sessions.statistics.inUse == 0 { break }
                if core.now > housekeeping.stopDeadline {
                    core.logger.warning("stop timeout: closing \(core.sessions.statistics.inUse) connections")
                    break
                }
            }
            if core.queue.takeSharedFreed() { core.remote.wakeSharedWriters() }
            // Buffers the work above gave back go to waiters before the wait (their data may
            // already be in the socket: no new edge would come).
            rearmWaiters()
            core.now = Posix.monotonicNanoseconds()
            let busy = executor.hasJobs || core.inboxNotified || core.hasReady
            let n = try core.epoll.wait(events, capacity: Self.maxEvents, timeout: busy ? 0 : waitTimeout())
            core.waits &+= 1
            core.now = Posix.monotonicNanoseconds()
            core.events &+= UInt64(n)
            if n > 0 { core.stats.completionsPerTurn.record(n) }  // a timeout harvested nothing
            for i in 0..<n {
                try dispatch(events[i])
                recycleClosed()
            }
            expireConnects()
            if core.now >= nextTick {
                nextTick = core.now &+ tickNanoseconds
                onTick()
            }
            rearmWaiters()
        }
    }

    /// Milliseconds until the next tick or connect deadline (at least 1 when one is near, so the
    /// wait is not a spin).
    private func waitTimeout() -> Int32 {
        var until = nextTick
        var i = 0  // by index: a for-in over the array allocates its iterator in unoptimised builds
        while i < core.deadlines.count {
            until = min(until, core.deadlines[i].deadline)
            i += 1
        }
        guard until > core.now else { return 0 }
        return Int32(min((until - core.now + 999_999) / 1_000_000, 60_000))
    }

    private func dispatch(_ event: epoll_event) throws(SystemError) {
        let tag = RequestTag(rawValue: event.token)
        switch tag.requestKind {
        case .recv:
            guard let c = core.sessions.resolve(tag.lease) else {
                core.stats.staleCompletions &+= 1
                return
            }
            // Plain masks (an option-set literal builds an array in unoptimised builds).
            let reported = event.events
            if reported & EpollCore.readableMask != 0 { c.pointee.readiness |= EpollCore.readable }
            if reported & EpollCore.peerDoneMask != 0 { c.pointee.readiness |= EpollCore.peerDone }
            if reported & EpollCore.writableMask != 0 { c.pointee.readiness |= EpollCore.writable }
            serve(c)
        case .accept:
            accept(Int(tag.lease.index))
        case .wake:
            try onWake()
        default:
            core.stats.staleCompletions &+= 1
        }
    }

    /// Serves the connections on the ready list, each once per turn (one that still has work goes
    /// back to the end for the next turn).
    private func serveReady() {
        var budget = core.readyCount  // those queued again while served wait for the next turn
        while budget > 0, let c = core.popReady() {
            budget -= 1
            serve(c)
            recycleClosed()
        }
    }

    /// Whatever `c`'s readiness allows now: a connect that ended, a send waiting for room, a
    /// writable callback due, bytes to read.
    private func serve(_ c: ConnectionRef) {
        if c.pointee.lifecycle.phase == .connecting {
            if c.pointee.lifecycle.pending.contains(.connect)
                && (c.pointee.readiness & EpollCore.writable != 0 || c.pointee.connectError != 0)
            {
                finishConnect(c)
            }
            return
        }
        if c.pointee.readiness & EpollCore.writable != 0 && c.pointee.lifecycle.pending.contains(.send) {
            if flush(c) { settle(c) }
        }
        if c.pointee.readiness & EpollCore.writableDue != 0 {
            c.pointee.readiness &= ~EpollCore.writableDue
            if c.pointee.output.bytes <= core.lowWater && c.pointee.lifecycle.takeWritable() {
                handler.writable(Connection(core.connectionID(c), core))
                afterCallback(c)
            }
        }
        if c.pointee.readiness & EpollCore.readable != 0 && c.pointee.lifecycle.pending.contains(.recv) {
            read(c)
        }
    }

    // MARK: Receiving

    /// Reads into buffers of the pool while the socket has bytes, the receive stays armed and the
    /// turn's budget lasts; each buffer goes to the handler as it is read.
    private func read(_ c: ConnectionRef) {
        var reads = 0
        while reads < Self.readBudget && c.pointee.readiness & EpollCore.readable != 0
            && c.pointee.lifecycle.pending.contains(.recv)
        {
            reads += 1
            guard let segment = core.takeReceiveBuffer() else {
                // The pool is empty: the receive ends and waits for buffers, as on ENOBUFS.
                core.stats.bufferShortages &+= 1
                c.pointee.lifecycle.ended(.recv)
                waiting.add(c)
                return
            }
            let buffer = core.receiveBuffer(segment)
            switch NonBlocking.receive(c.pointee.session.file.raw, into: buffer, count: core.receiveSize) {
            case .bytes(0):
                core.giveBack(segment)
                c.pointee.readiness &= ~EpollCore.readable
                c.pointee.lifecycle.ended(.recv)
                // The peer finished sending: the handler hears of it.
                c.pointee.lifecycle.peerClosed()
                handler.inputEnded(Connection(core.connectionID(c), core))
                afterCallback(c)
                return
            case .bytes(let n):
                c.pointee.buffersHeld += 1
                core.stats.bytesIn &+= UInt64(n)
                c.pointee.bytesIn &+= UInt64(n)
                c.pointee.lastActivity = core.now
                // A short read drained the socket (a later arrival is a new edge), unless the peer
                // has finished: then read on to its end.
                if n < core.receiveSize && c.pointee.readiness & EpollCore.peerDone == 0 {
                    c.pointee.readiness &= ~EpollCore.readable
                }
                if c.pointee.lifecycle.acceptsInput {
                    deliver(UnsafeMutableRawBufferPointer(start: buffer, count: n), segment, c)
                    afterCallback(c)
                } else {
                    release(segment, of: c)
                    settle(c)
                }
            case .wouldBlock:
                core.giveBack(segment)
                c.pointee.readiness &= ~EpollCore.readable
                return
            case .failed:
                core.giveBack(segment)
                c.pointee.readiness &= ~EpollCore.readable
                c.pointee.lifecycle.ended(.recv)
                core.stats.errors &+= 1
                c.pointee.lifecycle.failed(abnormal: true)
                settle(c)
                return
            }
        }
        if c.pointee.readiness & EpollCore.readable != 0 && c.pointee.lifecycle.pending.contains(.recv) {
            core.enqueueReady(c)  // more waits: after the others
        }
    }

    /// Hands received bytes to the handler and queues its in-place reply (as the io_uring loop
    /// does: ahead of what the call wrote; a small one behind a queue copied onto its last buffer).
    @inline(__always)
    private func deliver(_ bytes: UnsafeMutableRawBufferPointer, _ segment: Int32, _ c: ConnectionRef) {
        let anchor = c.pointee.output.tail
        core.replyAnchorSession = Int32(bitPattern: c.pointee.session.lease.index)
        core.replyAnchor = anchor
        let reply = handler.received(bytes, connection: Connection(core.connectionID(c), core))
        core.replyAnchorSession = -1
        if core.holdReceived {
            core.holdReceived = false
            core.hold(segment, count: bytes.count, c)
            return
        }
        let count = min(max(reply.count, 0), bytes.count)
        if count > 0 && c.pointee.lifecycle.sendsReplies {
            if anchor >= 0 && c.pointee.output.tail == anchor && count <= core.queue.outboundSize / 4
                && core.queue.write(UnsafeRawBufferPointer(rebasing: bytes[0..<count]), to: c, coalesce: true)
            {
                release(segment, of: c)
            } else {
                core.queue.insert(segment, count: count, after: anchor, in: c)
            }
        } else {
            release(segment, of: c)
        }
        if reply.close { _ = c.pointee.lifecycle.closeRequested(abort: false) }
    }

    /// Arms `c`'s receive (the lifecycle wants one): at once when a buffer is free, read at the top
    /// of the loop when the socket is readable; else it waits for buffers.
    private func arm(_ c: ConnectionRef) {
        guard core.receiveAvailable > 0 else {
            core.stats.bufferShortages &+= 1
            waiting.add(c)
            return
        }
        if c.pointee.bytesIn > 0 { core.stats.receiveRearms &+= 1 }
        c.pointee.lifecycle.posted(.recv)
        if c.pointee.readiness & EpollCore.readable != 0 { core.enqueueReady(c) }
    }

    /// Re-arms connections that waited for buffers, as many as are free.
    private func rearmWaiters() {
        var budget = core.receiveAvailable  // no more than buffers are free, as the buffer ring's wake
        while budget > 0, let c = waiting.popToRearm(core) {
            budget -= 1
            c.pointee.lifecycle.posted(.recv)
            if c.pointee.readiness & EpollCore.readable != 0 { core.enqueueReady(c) }
        }
    }

    /// Gives a sent or dropped segment back: an outbound buffer to the send queue, a receive buffer
    /// to the pool.
    @inline(__always)
    func release(_ segment: Int32, of c: ConnectionRef) {
        if core.queue.isOutbound(segment) {
            core.queue.freeOutbound(segment, of: c)
        } else {
            c.pointee.buffersHeld -= 1
            core.giveBack(segment)
        }
    }

    // MARK: Sending

    /// Sends what `c` has queued until it is all sent or the socket would block.
    /// - Returns: whether the send ended (all sent, or failed) or sent anything: the lifecycle has
    ///   more to decide (a receive paused at its bound resumes as the queue drains, as on io_uring).
    private func flush(_ c: ConnectionRef) -> Bool {
        let fd = c.pointee.session.file.raw
        var progressed = false
        while true {
            let outcome: NonBlocking.Outcome
            if core.queue.hasSeveral(c) {
                outcome = NonBlocking.send(fd, message: core.queue.gather(c))
            } else if let head = core.queue.head(c) {
                outcome = NonBlocking.send(fd, head.baseAddress.unsafelyUnwrapped, count: head.count)
            } else {
                outcome = .bytes(0)
            }
            switch outcome {
            case .bytes(let n):
                sent(n, c)
                if n > 0 { progressed = true }
                if c.pointee.output.head < 0 {
                    c.pointee.lifecycle.ended(.send)
                    if c.pointee.lifecycle.flags.contains(.wantsWritable) && c.pointee.output.bytes <= core.lowWater {
                        c.pointee.readiness |= EpollCore.writableDue
                        core.enqueueReady(c)
                    }
                    return true
                }
            case .wouldBlock:
                c.pointee.readiness &= ~EpollCore.writable
                return progressed
            case .failed:
                c.pointee.lifecycle.ended(.send)
                core.stats.errors &+= 1
                c.pointee.lifecycle.failed(abnormal: true)
                return true
            }
        }
    }

    /// `n` bytes of `c`'s queue went out: counted, their room given back to handle writers, the
    /// segments sent released.
    @inline(__always)
    private func sent(_ n: Int, _ c: ConnectionRef) {
        guard n > 0 else { return }
        core.stats.bytesOut &+= UInt64(n)
        c.pointee.bytesOut &+= UInt64(n)
        c.pointee.lastActivity = core.now
        c.pointee.lastProgress = core.now
        if c.pointee.remoteQueued > 0 {
            let returned = min(n, c.pointee.remoteQueued)
            c.pointee.remoteQueued -= returned
            core.remote.returnRoom(c.pointee.session.index, returned, epoch: c.pointee.session.epoch)
        }
        var remaining = n
        while remaining > 0 {
            let finished = core.queue.consume(c, &remaining)
            if finished < 0 { break }
            release(finished, of: c)
        }
        if c.pointee.lifecycle.flags.contains(.wantsWritable) && c.pointee.output.bytes <= core.lowWater
            && c.pointee.output.head >= 0
        {
            c.pointee.readiness |= EpollCore.writableDue
            core.enqueueReady(c)
        }
    }

    // MARK: Deciding and doing

    /// After a handler callback on `c`: carry out what the handler asked of any connection, then
    /// settle `c`.
    @inline(__always)
    private func afterCallback(_ c: ConnectionRef) {
        settleTouched()
        settle(c)
    }

    private func settleTouched() {
        while let c = core.popTouched() { settle(c) }
    }

    /// After any event on `c`: what its lifecycle calls for, done at once. A cancel, a shutdown and a
    /// send that ends change the lifecycle again, so it is asked again (a few rounds at most).
    private func settle(_ c: ConnectionRef) {
        var rounds = 0
        while rounds < 8 {
            rounds += 1
            let effects = c.pointee.lifecycle.settle(c.pointee.holdings, bounds)
            guard !effects.isEmpty else { return }
            var again = false
            if effects.contains(.cancelReceive) {
                c.pointee.lifecycle.ended([.recv, .cancelRecv])
                again = true
            }
            if effects.contains(.cancelSend) {
                c.pointee.lifecycle.ended([.send, .cancelSend])
                again = true
            }
            if effects.contains(.cancelConnect) {
                c.pointee.lifecycle.ended([.connect, .cancelConnect])
                again = true
            }
            if effects.contains(.pausedAtBound) { core.stats.receivePauses &+= 1 }
            if effects.contains(.send) {
                // A send starts: the stall clock counts from here, as io_uring's post of a send.
                c.pointee.lastProgress = core.now
                if flush(c) { again = true }
            }
            if effects.contains(.shutdown) {
                Glibc.shutdown(c.pointee.session.file.raw, Int32(SHUT_WR))
                c.pointee.lifecycle.shutdownCompleted()
                again = true
            }
            if effects.contains(.close) {
                close(c)
                return
            }
            if effects.contains(.receive) { arm(c) }
            if !again { return }
        }
    }

    /// Closes `c`'s socket (with `SO_LINGER` 0 first for a reset); it is recycled once the current
    /// event is handled (nothing on the stack holds its record then).
    private func close(_ c: ConnectionRef) {
        let fd = c.pointee.session.file.raw
        if c.pointee.lifecycle.flags.contains(.resetOnClose) { try? Sockets.setResetOnClose(fd) }
        _ = try? Sockets.close(fd)
        core.closedIndices[core.closedCount] = Int32(c.pointee.session.index)
        core.closedCount += 1
    }

    private func recycleClosed() {
        while core.closedCount > 0 {
            core.closedCount -= 1
            guard let c = core.sessions.record(at: Int(core.closedIndices[core.closedCount])) else { continue }
            recycle(c)
        }
    }

    /// The connection is closed: its queued and held buffers go back, its session too, and the
    /// handler hears of it.
    private func recycle(_ c: ConnectionRef) {
        let end = core.giveBackHeld(c) { release($0, of: c) }
        c.pointee.readiness = 0
        let id = core.connectionID(c)
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
        settleTouched()
        resumeAccepting()
    }

    // MARK: Accepting

    private func accept(_ i: Int) {
        var accepted = 0
        while accepted < 64 && !listeners[i].paused {
            let fd: Int32?
            do throws(SystemError) {
                fd = try NonBlocking.accept(listeners[i].fd)
            } catch {
                // Out of descriptors (or another lasting failure): out of the wait set, so a level-
                // triggered listener does not spin; back when a connection closes, or on a tick.
                // Counted as an error unless it is a want of descriptors or memory (as io_uring's).
                switch error.errno {
                case .processFileTableFull, .systemFileTableFull, .noMemory, .noBufferSpace: break
                default: core.stats.acceptErrors &+= 1
                }
                pauseAccepting(i, error)
                return
            }
            guard let fd else { return }
            listeners[i].episodeOpen = false
            accepted += 1
            opened(fd, listener: listeners[i].number)
        }
    }

    private func opened(_ fd: Int32, listener: UInt8) {
        // Counted as accepted before the cap is looked at (rejected ones too), as the io_uring loop does.
        if listener == 0 { core.stats.accepted &+= 1 } else { core.stats.endpointConnections &+= 1 }
        guard !core.stopping, core.admits(listener), let c = core.sessions.acquire(file: .fd(fd), slot: nil) else {
            if listener == 0 && !core.stopping { core.stats.rejected &+= 1 }
            _ = try? Sockets.close(fd)
            return
        }
        do throws(SystemError) {
            try core.epoll.add(fd, EpollCore.connectionEvents, token: c.pointee.tag(.recv))
        } catch {
            core.logger.warning("epoll_ctl failed for an accepted socket: \(error)")
            if listener == 0 { core.stats.rejected &+= 1 }
            core.stats.errors &+= 1
            _ = try? Sockets.close(fd)
            _ = core.sessions.release(c)
            return
        }
        c.pointee.readiness = 0
        c.pointee.lastActivity = core.now
        c.pointee.listener = listener
        c.pointee.announced = true
        core.tables.opened(c.pointee.session.index, epoch: c.pointee.session.epoch, maxOutput: core.maxOutput)
        if listener != 0 { core.opened(listener, c) }
        handler.opened(Connection(core.connectionID(c), core))
        afterCallback(c)
    }

    private func pauseAccepting(_ i: Int, _ error: SystemError) {
        guard !listeners[i].paused else { return }
        listeners[i].paused = true
        core.epoll.remove(listeners[i].fd)
        if !listeners[i].episodeOpen {  // counted and logged once per episode
            listeners[i].episodeOpen = true
            core.stats.acceptPauses &+= 1
            core.logger.notice("accepting paused: \(error); resuming when a connection closes or on the next tick")
        }
    }

    private func resumeAccepting() {
        guard !core.stopping else { return }
        for i in listeners.indices where listeners[i].paused {
            listeners[i].paused = false
            core.stats.acceptRearms &+= 1
            do throws(SystemError) {
                try core.epoll.add(listeners[i].fd, .readable, token: Self.listenerToken(i))
            } catch {
                listeners[i].paused = true
            }
        }
    }

    // MARK: Connecting

    /// A connect ended (writability, or an error found when it started): connected, the connection
    /// opens as an accepted one does; otherwise it closes and its handler hears why.
    private func finishConnect(_ c: ConnectionRef) {
        if c.pointee.connectError == 0 {
            let error = NonBlocking.pendingError(c.pointee.session.file.raw)
            if error != 0 { c.pointee.connectError = -error }
        }
        c.pointee.lifecycle.ended(.connect)
        if c.pointee.connectError == 0 {
            c.pointee.lifecycle.connected()
            c.pointee.lastActivity = core.now
            c.pointee.lastProgress = core.now
            core.stats.connects &+= 1
            core.tables.opened(c.pointee.session.index, epoch: c.pointee.session.epoch, maxOutput: core.maxOutput)
            c.pointee.announced = true
            handler.opened(Connection(core.connectionID(c), core))
            afterCallback(c)
            return
        }
        c.pointee.lifecycle.failed()
        settle(c)
    }

    /// Connects past their deadline time out: cancelled (their socket closed), heard as `timedOut`.
    private func expireConnects() {
        guard !core.deadlines.isEmpty else { return }
        var i = 0
        while i < core.deadlines.count {
            let entry = core.deadlines[i]
            guard let c = core.sessions.resolve(RequestTag(rawValue: entry.tag).lease),
                c.pointee.lifecycle.pending.contains(.connect)
            else {
                core.deadlines.remove(at: i)  // connected, failed or closed already
                continue
            }
            if entry.deadline <= core.now {
                core.deadlines.remove(at: i)
                c.pointee.connectTimedOut = true
                c.pointee.lifecycle.failed()
                settle(c)
                recycleClosed()
                continue
            }
            i += 1
        }
    }

    // MARK: Housekeeping

    private func onTick() {
        housekeeping.ticks &+= 1
        if !core.stopping {
            let idle = housekeeping.idleNanoseconds
            let stall = housekeeping.stallNanoseconds
            for i in 0..<core.sessions.capacity {
                guard let c = core.sessions.record(at: i) else { continue }
                switch Housekeeping.sweep(c, core, idleNanoseconds: idle, stallNanoseconds: stall) {
                case .keep: break
                case .idle(let reset):
                    c.pointee.lifecycle.failed(reset: reset)
                    settle(c)
                    recycleClosed()
                    continue
                case .stalled:
                    c.pointee.lifecycle.failed(reset: true)
                    settle(c)
                    recycleClosed()
                    continue
                }
                // A refusal for want of outbound buffers has no send of its own to wait for: retry.
                if c.pointee.output.head < 0 && core.queue.outboundAvailable > 0 && c.pointee.lifecycle.takeWritable() {
                    handler.writable(Connection(core.connectionID(c), core))
                    afterCallback(c)
                }
            }
            resumeAccepting()
        }
        let snapshot = housekeeping.publishStatistics(core, buffersHeld: core.receiveCount - core.receiveAvailable)
        if housekeeping.ticks % 40 == 0 { core.logger.debug("statistics: \(snapshot)") }
    }

    /// The wake-up eventfd: a stop, the inbox (the loop looks at it each turn), mail from other rings,
    /// an injected failure (tests: the loop fails as on a failed `epoll_wait`).
    private func onWake() throws(SystemError) {
        var value: UInt64 = 0
        _ = Glibc.read(core.mailboxes.ports[core.ringIndex].wakeFD, &value, 8)
        if core.mailboxes.stopRequested.load(ordering: .acquiring) && !core.stopping {
            beginStop()
        }
        let fault = core.mailboxes.ports[core.ringIndex].injectedFault.exchange(0, ordering: .acquiringAndReleasing)
        if fault != 0 { throw SystemError("epoll_wait", errno: Errno(rawValue: fault)) }
        for from in 0..<core.mailboxes.count { deliverMail(from: from) }
    }

    private func deliverMail(from: Int) {
        let box = core.mailboxes.box(from: from, to: core.ringIndex)
        guard box.notified.exchange(false, ordering: .acquiringAndReleasing) else { return }
        try? box.drain { (value, bytes) in
            core.stats.delivered &+= 1
            guard !core.stopping else { return }
            handler.received(message: RingMessage(from: from, value: value, bytes: bytes), ring: RingContext(core))
            settleTouched()
        }
    }

    /// Stop: no new accepts; every connection closes (what is queued is dropped).
    private func beginStop() {
        core.stopping = true
        housekeeping.stopDeadline = core.now &+ UInt64(core.configuration.stopTimeout.nanoseconds)
        for i in listeners.indices where !listeners[i].paused { core.epoll.remove(listeners[i].fd) }
        for i in 0..<core.sessions.capacity {
            guard let c = core.sessions.record(at: i) else { continue }
            c.pointee.lifecycle.failed()
            settle(c)
        }
    }

    func teardown() {
        guard !tornDown else { return }
        tornDown = true
        core.mailboxes.ports[core.ringIndex].exited.store(true, ordering: .releasing)
        core.endOpenConnections(&handler)
        for i in 0..<core.sessions.capacity {
            if let c = core.sessions.record(at: i), !c.pointee.lifecycle.pending.contains(.close) {
                _ = try? Sockets.close(c.pointee.session.file.raw)
            }
        }
        let final = housekeeping.publishStatistics(core, buffersHeld: core.receiveCount - core.receiveAvailable)
        core.logger.info("ring stopped: \(final)")
    }
}
