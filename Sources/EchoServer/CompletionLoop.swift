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
    @exclusivity(unchecked) var handler: Handler
    @exclusivity(unchecked) var receiver: Receiver
    @exclusivity(unchecked) var acceptor: Acceptor
    /// Accepts on a secondary listener (a metrics endpoint): its connections carry listener 1.
    @exclusivity(unchecked) var secondary: Acceptor?
    @exclusivity(unchecked) var housekeeping: Housekeeping
    /// Completions each turn waits for, and the longest wait (batched waiting), or 1 and nil.
    let waitCount: UInt32
    let waitTimeout: Duration?

    init(
        core: LoopCore, handler: Handler, receiver: consuming Receiver, listener: Int32,
        secondaryListener: Int32? = nil, publish: @escaping (ServerStatistics, Bool) -> Void
    ) {
        self.core = core
        self.handler = handler
        self.receiver = receiver
        acceptor = Acceptor(listener: listener, core: core)
        secondary = secondaryListener.map { Acceptor(listener: $0, core: core, kind: .acceptSecondary, maxDepth: 1) }
        housekeeping = Housekeeping(core: core, publish: publish)
        waitCount = UInt32(core.configuration.batchWait?.completions ?? 1)
        waitTimeout = core.configuration.batchWait?.timeout
        self.handler.start(capacity: core.sessions.capacity)
    }

    // MARK: The loop

    func run() throws(URingError) {
        core.now = Posix.monotonicNanoseconds()
        try housekeeping.armWake(core)
        try housekeeping.armTick(core)
        try acceptor.arm(core)
        try secondary?.arm(core)
        while true {
            if core.stopping {
                if core.sessions.statistics.inUse == 0 && core.contexts.statistics.inUse == 0 { break }
                if core.now > housekeeping.stopDeadline {
                    core.logger.warning("stop timeout: closing \(core.sessions.statistics.inUse) connections with the ring")
                    break
                }
            }
            try enter()
            core.now = Posix.monotonicNanoseconds()
            let harvested = try core.ring.forEachCompletion { (c: Completion) throws(URingError) in try dispatch(c) }
            core.stats.completionsPerTurn.record(harvested)
            try receiver.afterBatch(core: core)
        }
        teardown()
    }

    /// One `io_uring_enter`. `EAGAIN` (no memory for requests now) and `EBUSY` (completions backed
    /// up) mean: reap what is there and try again; `EBADR` means the kernel dropped completions,
    /// which is logged and counted. Anything else ends the ring (and stops the server).
    @inline(__always)
    func enter() throws(URingError) {
        do {
            if let timeout = waitTimeout {
                try core.ring.submitAndWait(waitCount, timeout: timeout)
            } else {
                try core.ring.submitAndWait(1)
            }
        } catch {
            switch error.errno {
            case .wouldBlock, .busy:
                core.stats.enterRetries &+= 1
                // Nothing to reap: wait a moment (submitting nothing) rather than spin.
                if core.ring.readyCompletions == 0 { _ = try? core.ring.submitAndWait(1, timeout: .milliseconds(1)) }
            case .droppedCompletions:
                core.stats.droppedCompletions &+= 1
                core.logger.error("io_uring_enter: the kernel dropped completions (EBADR); connections may stall")
            default:
                throw error
            }
        }
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
        case .accept: try onAccept(c, tag, listener: 0)
        case .acceptSecondary: try onAccept(c, tag, listener: 1)
        case .closeRejected:
            Acceptor.onRejectedClosed(tag, core)
            try resumeAccepting()
        case .timeout: try onTick()
        case .wake: if tag.generation == 0 { try onWake(c) }  // 1: the cancel of the accepts at stop
        case .message:
            if tag.generation != 1 {
                core.onMessageSent(c, tag)
            } else if Int(tag.index) < core.mailboxes.count {
                try deliverMail(from: Int(tag.index))
            }
        default: core.stats.staleCompletions &+= 1
        }
    }

    func teardown() {
        // Whatever is still open after the stop timeout: plain fds are closed here, slots when the
        // table is unregistered (and the ring exits).
        core.mailboxes.ports[core.ringIndex].exited.store(true, ordering: .releasing)
        // A plain fd whose close was already submitted may be another socket's number by now.
        for i in 0..<core.sessions.capacity {
            if let s = core.sessions.session(at: i), !s.pointee.file.isFixed, !s.pointee.pending.contains(.close) {
                _ = try? Sockets.close(s.pointee.file.raw)
            }
        }
        receiver.teardown(core: core)
        // Unregistering a file table waits for the requests still using it on older kernels; with
        // connections left, the ring's exit closes the slots instead.
        if core.useSlots && core.sessions.statistics.inUse == 0 { try? core.ring.unregisterFiles() }
        let final = housekeeping.publishStatistics(core, buffersHeld: receiver.buffersHeld)
        core.logger.info("ring stopped: \(final)")
    }
}
