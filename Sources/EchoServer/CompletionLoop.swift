import SocketPool
import URing

/// The `GetQueuedCompletionStatus` loop: one ring, one thread, one handler.
///
/// Each turn submits what was prepared, waits for at least one completion, then dispatches every
/// ready completion by its tag. A connection's own requests (receive, send, cancels, close) carry
/// the connection's session lease (index and generation), so a completion for a connection that has since been
/// recycled is counted as stale and dropped; accepts and rejected closes use the shared context
/// slab; the timer, the wake-up and mail have fixed tags.
///
/// Generic over its handler and its receive strategy so both specialise: no existential, no
/// closure per request. Everything here is confined to the loop's thread.
final class CompletionLoop<Handler: ConnectionHandler, Receiver: ReceivePath & ~Copyable> {
    let core: URingCore
    @exclusivity(unchecked) var handler: Handler
    @exclusivity(unchecked) var receiver: Receiver
    @exclusivity(unchecked) var acceptor: Acceptor
    /// Accepts on the server's other listeners that this ring serves (usually none): made once.
    let sides: UnsafeMutablePointer<Acceptor>
    let sideCount: Int
    @exclusivity(unchecked) var housekeeping: Housekeeping
    /// Where a connection's receiving pauses (``ConnectionLifecycle/settle(_:_:)``).
    let bounds: ConnectionLifecycle.Bounds
    /// Completions each turn waits for, and the longest wait (batched waiting), or 1 and nil.
    let waitCount: UInt32
    let waitTimeout: Duration?
    /// Set once ``teardown()`` has run (a failing ring's loop tears down before its error goes up).
    var tornDown = false

    init(
        core: URingCore, handler: Handler, receiver: consuming Receiver,
        listeners: RingListeners, publish: @escaping (ServerStatistics, Bool) -> Void
    ) {
        self.core = core
        self.handler = handler
        self.receiver = receiver
        acceptor = Acceptor(listener: listeners.main, core: core)
        sideCount = listeners.sides.count
        sides = .allocate(capacity: max(sideCount, 1))
        for (i, side) in listeners.sides.enumerated() {
            (sides + i).initialize(to: Acceptor(listener: side.fd, core: core, number: side.number, maxDepth: 1))
        }
        housekeeping = Housekeeping(core: core, publish: publish)
        waitCount = UInt32(core.configuration.batchWait?.completions ?? 1)
        waitTimeout = core.configuration.batchWait?.timeout
        // A relay's output is another connection's input: its receiving pauses for its held buffers
        // only (ConnectionHandler.pausesReceivingForQueuedOutput).
        let own = Handler.pausesReceivingForQueuedOutput
        bounds = .init(
            bytes: own ? core.maxPending : Int.max, buffers: self.receiver.maxHeldPerConnection,
            outbound: own ? core.maxOutboundHeld : Int32.max)
        core.releaseReceived = { [unowned(unsafe) self] segment, c in self.receiver.release(segment, of: c) }
        self.handler.start(capacity: core.sessions.capacity)
    }

    deinit {
        sides.deinitialize(count: sideCount)
        sides.deallocate()
    }

    /// Where the acceptor of other listener `number` is in ``sides``.
    func side(_ number: UInt8) -> Int {
        var i = 0
        while sides[i].number != number { i += 1 }
        return i
    }

    // MARK: The loop

    func run() throws(URingError) {
        core.now = Posix.monotonicNanoseconds()
        try housekeeping.armWake(core)
        try housekeeping.armTick(core)
        try acceptor.arm(core)
        for i in 0..<sideCount { try sides[i].arm(core) }
        let executor = core.mailboxes.ports[core.ringIndex].executor
        executor.attach()
        URingCore.setCurrent(core)
        // After the teardown: the tasks its closes resume run on the global executor, once this
        // thread is done with the ring's state.
        defer { executor.detach() }
        do {
            try turns(executor)
        } catch {
            URingCore.setCurrent(nil)
            core.mailboxes.ports[core.ringIndex].exited.store(true, ordering: .releasing)
            teardown()
            throw error
        }
        URingCore.setCurrent(nil)  // what teardown's callbacks write to other rings goes by eventfd
        teardown()
    }

    /// The loop's turns, until it stops (or a ring error ends it).
    private func turns(_ executor: RingExecutor) throws(URingError) {
        var jobs: [UnownedJob] = []
        jobs.reserveCapacity(256)
        while true {
            if core.inboxNotified {
                try core.drainInbox { (value, bytes) throws(URingError) in
                    guard !core.stopping else { return }  // dropped: the ring is stopping
                    core.stats.delivered &+= 1
                    handler.received(
                        message: RingMessage(from: RingMessage.outside, value: value, bytes: bytes), ring: RingContext(core))
                    try settleTouched()
                }
                try settleTouched()
            }
            if executor.hasJobs { try runJobs(executor, &jobs) }
            if core.stopping {
                if core.sessions.statistics.inUse == 0 && core.contexts.statistics.inUse == 0 {
                    // Quiet closes are done once submitted: submit the last ones before leaving.
                    _ = try? core.ring.submit()
                    break
                }
                if core.now > housekeeping.stopDeadline {
                    core.logger.warning("stop timeout: closing \(core.sessions.statistics.inUse) connections with the ring")
                    break
                }
            }
            // Shared outbound buffers came free (completions, jobs, closes): writers of any
            // connection that waited for them may go on (a flag when nobody waits).
            if core.queue.takeSharedFreed() { core.remote.wakeSharedWriters() }
            // Jobs that the last ones enqueued, and inbox records this thread pushed (a task's
            // write through a handle of this ring), are taken before the ring blocks.
            try enter(wait: !executor.hasJobs && !core.inboxNotified)
            core.now = Posix.monotonicNanoseconds()
            let harvested = try core.ring.forEachCompletion { (c: Completion) throws(URingError) in try handle(c) }
            core.stats.completionsPerTurn.record(harvested)
            try receiver.afterBatch(core: core)
        }
    }

    /// One `io_uring_enter`. `EAGAIN` (no memory for requests now) and `EBUSY` (completions backed
    /// up) mean: reap what is there and try again; `EBADR` means the kernel dropped completions,
    /// which is logged and counted. Anything else ends the ring (and stops the server).
    @inline(__always)
    func enter(wait: Bool = true) throws(URingError) {
        do {
            if !wait {
                try core.ring.submitAndGetEvents()
            } else if let timeout = waitTimeout {
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

    /// Runs the tasks' jobs queued for this ring, then carries out what they asked of its
    /// connections (writes, closes, consumed input), as after a callback.
    func runJobs(_ executor: RingExecutor, _ jobs: inout [UnownedJob]) throws(URingError) {
        executor.runJobs(into: &jobs)
        try settleTouched()
        if core.closedCount > 0 { try recycleClosed() }
    }

    /// One completion: dispatched, then the connections whose quiet close it submitted are
    /// recycled.
    @inline(__always)
    func handle(_ completion: Completion) throws(URingError) {
        try dispatch(completion)
        if core.closedCount > 0 { try recycleClosed() }
    }

    /// One completion, by its tag: a connection's own request, a shared context's (accepts,
    /// rejected closes), or one of the loop's control requests.
    func dispatch(_ completion: Completion) throws(URingError) {
        let tag = RequestTag(rawValue: completion.tag)
        if let request = PendingRequests(tagKind: tag.kind) {
            // A connection's own request: its session lease names the connection, and a completion
            // for a recycled session (or for a request no longer in flight) is stale.
            guard let c = core.sessions.resolve(tag.lease), c.pointee.lifecycle.pending.contains(request) else {
                core.stats.staleCompletions &+= 1
                receiver.discard(completion)
                return
            }
            switch request {
            case .recv: try onReceive(completion, c)
            case .send: try onSend(completion, c)
            case .close: try onClose(completion, c)
            case .shutdown: try onShutdown(completion, c)
            case .socket, .connect, .connectTimeout: try onConnecting(completion, c, request)
            default: try onCancel(completion, c, request)
            }
            return
        }
        if let control = ControlTag(tag) { return try onControl(completion, control) }
        guard let context = core.contexts.resolve(tag) else {
            core.stats.staleCompletions &+= 1
            return
        }
        switch context.pointee {
        case .accept(let listener, let into): try onAccept(completion, tag, listener: listener, into: into)
        case .closeRejected(let slot):
            Acceptor.onRejectedClosed(tag, slot: slot, core)
            try resumeAccepting()
        case .none: core.stats.staleCompletions &+= 1
        }
    }

    func onControl(_ completion: Completion, _ control: ControlTag) throws(URingError) {
        switch control {
        case .tick: try onTick()
        case .wake: try onWake(completion)
        case .acceptsCancelled: break
        case .mail(let from): if from < core.mailboxes.count { try deliverMail(from: from) }
        case .mailSent(let to): core.onMessageSent(completion, to: to)
        case .socketOption: if let errno = completion.error { core.onSocketOptionFailed(errno) }
        }
    }

    func teardown() {
        guard !tornDown else { return }
        tornDown = true
        // Whatever is still open after the stop timeout: plain fds are closed here, slots when the
        // table is unregistered (and the ring exits).
        core.mailboxes.ports[core.ringIndex].exited.store(true, ordering: .releasing)
        // Connections still open (the stop timed out, or the ring failed) end here for their
        // handles and their handler: handles get .closed, and every opened connection hears closed,
        // so nothing waits for them (an async connection's task, say).
        core.endOpenConnections(&handler)
        // A plain fd whose close was already submitted may be another socket's number by now.
        for i in 0..<core.sessions.capacity {
            if let c = core.sessions.record(at: i), !c.pointee.session.file.isFixed,
                !c.pointee.lifecycle.pending.contains(.close)
            {
                _ = try? Sockets.close(c.pointee.session.file.raw)
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
