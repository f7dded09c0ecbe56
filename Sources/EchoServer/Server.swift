import Dispatch
import Logging
import Metrics
import ServiceLifecycle
import SocketPool
import Synchronization
import URing

/// A TCP server over io_uring: N ring threads, each with its own `SO_REUSEPORT` listener and its
/// own completion loop serving `Handler`. No state is shared between rings and no lock is taken
/// on the hot path; the only cross-thread traffic is a stop request (an eventfd write) and the
/// statistics each ring publishes once per housekeeping tick.
///
/// ```swift
/// let server = Server(configuration: config)   // an echo server; or Server(configuration:) { MyHandler() }
/// try server.start()          // listening when this returns
/// print(server.boundAddress!)
/// server.stop()               // from any thread
/// server.wait()
/// ```
///
/// It is also a swift-service-lifecycle `Service`: in a `ServiceGroup`, graceful shutdown stops it.
public final class Server<Handler: ConnectionHandler>: Sendable {
    /// The configuration it was made with.
    public let configuration: ServerConfiguration
    /// Makes ring `i`'s handler, on that ring's thread.
    let makeHandler: @Sendable (Int) -> Handler
    let logger: Logger
    let state = PthreadLock(State())
    /// Left once, when the server has stopped (``ServerLifecycle``): what ``wait()`` waits for.
    let stopped = DispatchGroup()
    /// Every ring thread is in it until its loop has ended: a ring keeps its descriptor open until
    /// all have left, so another ring's `MSG_RING` never reaches a closed or reused number.
    let ringsRunning = DispatchGroup()
    let metrics: [ServerMetrics]
    /// The server's other listeners: number `i + 1` is `listeners[i]` (``Connection/listener``).
    let listeners: [Listener]

    struct State {
        var lifecycle = ServerLifecycle()
        var perThread: [ServerStatistics] = []
        var reported: [ServerStatistics] = []
        var boundAddress: SocketAddress?
        var listenerAddresses: [SocketAddress] = []
        var setupErrors: [URingError] = []
        var faults = FaultInjection()
        /// The driver the rings run on, decided once at start (``ServerConfiguration/driver``).
        var driver = ServerConfiguration.Driver.ioUring
        /// How the start ended (the first one), and who waits to know (``listeningAddress``).
        var started: Result<SocketAddress, ServerError>?
        var listeningWaiters: [CheckedContinuation<SocketAddress, any Error>] = []
    }

    /// Creates a server; nothing is bound until ``start()``.
    /// - Parameters:
    ///   - configuration: what to serve and how.
    ///   - logger: where episodes (accept pauses, fallbacks, errors) and statistics are logged.
    ///   - listeners: other addresses to serve, each with its own handler on one of the rings
    ///     (see ``Listener``); its connections' ``Connection/listener`` is its place here plus one.
    ///   - metricsFactory: the swift-metrics backend the server's counters go to (labelled per
    ///     ring); `nil` for the one bootstrapped with `MetricsSystem.bootstrap` (by default a no-op).
    ///   - makeHandler: makes one handler per ring thread, for the main listener's connections.
    public convenience init(
        configuration: ServerConfiguration, logger: Logger = Logger(label: "uring-echo"), listeners: [Listener] = [],
        metricsFactory: (any MetricsFactory)? = nil, makeHandler: @escaping @Sendable () -> Handler
    ) {
        self.init(
            configuration: configuration, logger: logger, listeners: listeners, metricsFactory: metricsFactory,
            makeRingHandler: { _ in makeHandler() })
    }

    /// A server whose handler factory is told which ring it makes the handler for.
    package init(
        configuration: ServerConfiguration, logger: Logger, listeners: [Listener], metricsFactory: (any MetricsFactory)?,
        makeRingHandler: @escaping @Sendable (Int) -> Handler
    ) {
        self.configuration = configuration
        self.logger = logger
        self.makeHandler = makeRingHandler
        self.listeners = listeners
        let factory = metricsFactory ?? MetricsSystem.factory
        // Within validated bounds; an invalid thread count fails in start(), before any ring runs.
        self.metrics = (0..<max(1, min(configuration.threads, 256))).map { ServerMetrics(ring: $0, factory: factory) }
        stopped.enter()
    }

    deinit {
        // Never started: nothing will leave the group, and a group must be balanced when freed.
        if state.withLock({ $0.lifecycle.isNotStarted }) { stopped.leave() }
    }

    /// Where the server listens, once started (the real port when configured with port 0).
    public var boundAddress: SocketAddress? { state.withLock { $0.boundAddress } }

    /// Where each of the other ``Listener``s listens, in their order, once started (the real port
    /// when configured with port 0).
    public var listenerAddresses: [SocketAddress] { state.withLock { $0.listenerAddresses } }

    /// Where the other listener called `name` listens, once started.
    /// - Parameter name: a ``Listener/name``.
    public func address(ofListener name: String) -> SocketAddress? {
        guard let i = listeners.firstIndex(where: { $0.name == name }) else { return nil }
        return state.withLock { i < $0.listenerAddresses.count ? $0.listenerAddresses[i] : nil }
    }

    /// Ring `ring` as other threads see it (its executor, its inbox), while the rings exist
    /// (from the end of a successful ``start()``).
    func port(ofRing ring: Int) -> RingPort? {
        state.withLock { s in s.lifecycle.mailboxes.flatMap { ring < $0.count ? $0.ports[ring] : nil } }
    }

    /// Ring `ring`, for any thread or task (``RingHandle``): from the end of a successful
    /// ``start()`` on (nil before, or for a ring that does not exist).
    /// - Parameter ring: `0..<configuration.threads`.
    public func ring(_ ring: Int) -> RingHandle? {
        ring >= 0 ? port(ofRing: ring).map(RingHandle.init(port:)) : nil
    }

    /// Ring `ring`'s own counters, as of its last tick (`nil` for a ring that does not exist).
    /// - Parameter ring: `0..<configuration.threads`.
    public func statistics(ring: Int) -> ServerStatistics? {
        state.withLock { s in ring >= 0 && ring < s.perThread.count ? s.perThread[ring] : nil }
    }

    /// The counters summed over all rings, as of the end of each ring's last loop turn.
    public var statistics: ServerStatistics {
        state.withLock { s in
            var total = ServerStatistics()
            for t in s.perThread { total.add(t) }
            return total
        }
    }

    /// Waits until the server listens, and returns where (the real port when configured with
    /// port 0): for a task beside the one that starts the server, with no polling.
    /// - Throws: the ``ServerError`` the start failed with (``ServerError/stopped`` after a stop
    ///   that came before it).
    public var listeningAddress: SocketAddress {
        get async throws {
            try await withCheckedThrowingContinuation { continuation in
                let known = state.withLock { s -> Result<SocketAddress, ServerError>? in
                    if s.started == nil { s.listeningWaiters.append(continuation) }
                    return s.started
                }
                if let known { continuation.resume(with: known.mapError { $0 as any Error }) }
            }
        }
    }

    /// Records how the (first) start ended and tells those waiting for it.
    func started(_ outcome: Result<SocketAddress, ServerError>) {
        let waiters = state.withLock { s -> [CheckedContinuation<SocketAddress, any Error>] in
            guard s.started == nil else { return [] }
            s.started = outcome
            defer { s.listeningWaiters = [] }
            return s.listeningWaiters
        }
        for waiter in waiters { waiter.resume(with: outcome.mapError { $0 as any Error }) }
    }

    /// Binds the listeners and starts the ring threads; returns once every ring is serving.
    /// - Throws: ``ServerError`` for a bad configuration, a second start, or a ring, listener or
    ///   registration that could not be set up (then nothing is left running).
    public func start() throws(ServerError) {
        do {
            started(.success(try startRings()))
        } catch {
            if error != .alreadyStarted { started(.failure(error)) }
            throw error
        }
    }

    /// ``start()``'s work; returns the main listener's address.
    func startRings() throws(ServerError) -> SocketAddress {
        try configuration.validate()
        guard listeners.count <= 254 else { throw .invalidConfiguration("at most 254 other listeners, got \(listeners.count)") }
        for listener in listeners { try listener.validate(configuration) }
        switch state.withLock({ $0.lifecycle.startRequested() }) {
        case .proceed: break
        case .throwAlreadyStarted: throw .alreadyStarted
        case .throwStopped: throw .stopped
        }
        state.withLock { $0.faults.whileStarting }?()
        let driver = resolveDriver()
        state.withLock { $0.driver = driver }
        let threads = configuration.threads
        var mains: [Int32] = []
        var sides: [SideListener] = []
        var wakes: [Int32] = []
        func cleanup() {
            for fd in mains + sides.map(\.fd) + wakes { _ = try? Sockets.close(fd) }
        }
        var bound: SocketAddress
        var sideBound: [SocketAddress] = []
        do throws(URingError) {
            var address = SocketAddress(host: configuration.host, port: configuration.port)!
            for i in 0..<threads {
                let fd = try Sockets.listen(
                    on: address, backlog: configuration.backlog, reusePort: threads > 1, noDelay: true)
                mains.append(fd)
                if i == 0 {
                    address = try Sockets.localAddress(fd)
                }
                wakes.append(try Sockets.makeEventFD())
            }
            bound = address
            for (i, listener) in listeners.enumerated() {
                let fd = try Sockets.listen(
                    on: SocketAddress(host: listener.host, port: listener.port)!, backlog: listener.backlog,
                    reusePort: false, noDelay: true)
                sides.append(SideListener(fd: fd, number: UInt8(i + 1), ring: listener.ring, maxConnections: listener.maxConnections))
                sideBound.append(try Sockets.localAddress(fd))
            }
        } catch {
            cleanup()
            if state.withLock({ $0.lifecycle.startFailed() }) { stopped.leave() }
            throw ServerError(setupFailure: error)
        }
        // From here the mailboxes own the eventfds.
        let remotes = (0..<threads).map { i in
            RemoteConnections(
                capacity: configuration.connections(forRing: i) + configuration.outboundConnections(forRing: i)
                    + RingListeners(main: -1, sides: sides.filter { $0.ring == i }).extraSessions,
                inboxBytes: configuration.mailboxBytes, outboundBuffers: configuration.outboundBuffers,
                outboundSize: configuration.bufferSize, maxOutput: configuration.maxOutputBytesPerConnection,
                guaranteedBuffers: configuration.guaranteedOutboundBuffers)
        }
        let mailboxes = Mailboxes(
            count: threads, capacity: configuration.mailboxBytes, wakeDescriptors: wakes, remotes: remotes)
        let stopWhileStarting = state.withLock {
            $0.perThread = Array(repeating: ServerStatistics(), count: threads)
            $0.reported = Array(repeating: ServerStatistics(), count: threads)
            $0.boundAddress = bound
            $0.listenerAddresses = sideBound
            return $0.lifecycle.ringsCreated(mailboxes, threads: threads)
        }
        if case .wake = stopWhileStarting { stop() }
        let ready = DispatchSemaphore(value: 0)
        // Every ring starts serving only once all exist, so a post to another ring finds its fd.
        let go = DispatchGroup()
        go.enter()
        for i in 0..<threads {
            ringsRunning.enter()
            let ringListeners = RingListeners(main: mains[i], sides: sides.filter { $0.ring == i })
            do throws(URingError) {
                try Posix.startThread(name: "uring-ring-\(i)") { [self] in
                    runRing(i, ringListeners, mailboxes: mailboxes, ready: ready, go: go)
                    ringListeners.close()
                    ringThreadEnded()
                }
            } catch {
                ringListeners.close()
                ringsRunning.leave()
                state.withLock { $0.setupErrors.append(error) }
                ready.signal()
                ringThreadEnded()
            }
        }
        for _ in 0..<threads { ready.wait() }
        go.leave()
        let errors = state.withLock { $0.setupErrors }
        // Where io_uring is unavailable every ring fails alike; that cause is the one to report.
        if let first = errors.first(where: IOUring.isUnavailable) ?? errors.first {
            stop()
            wait()
            throw ServerError(setupFailure: first)
        }
        state.withLock { $0.lifecycle.ringsReady() }
        let stats = statistics
        if driver == .epoll {
            logger.info("listening on \(bound) with \(threads) ring(s), mode \(configuration.mode), driver epoll")
        } else {
            logger.info(
                "listening on \(bound) with \(threads) ring(s), mode \(configuration.mode), receive \(configuration.receive), setup \(stats.setupFlags), features \(stats.features)"
            )
        }
        return bound
    }

    /// The driver every ring runs on: the configured one, or for ``ServerConfiguration/Driver/automatic``
    /// io_uring where it gives what the server needs, else epoll, with one notice saying why.
    func resolveDriver() -> ServerConfiguration.Driver {
        switch configuration.driver {
        case .ioUring: return .ioUring
        case .epoll: return .epoll
        case .automatic:
            guard let why = IOUring.refusal() else { return .ioUring }
            logger.notice("\(why); serving with epoll (docs/operating.md: how to allow io_uring)")
            return .epoll
        }
    }

    /// ``start()``, except that a stop which came first is not an error: false then (nothing to
    /// serve or wait for).
    func startUnlessStopped() throws(ServerError) -> Bool {
        do {
            try start()
            return true
        } catch {
            if error == .stopped { return false }
            throw error
        }
    }

    /// Why the server stopped by itself, if it did: a ring ended on an error
    /// (``ServerError/ringFailed(ring:_:)``). `nil` after a requested stop.
    public var failure: ServerError? { state.withLock { $0.lifecycle.failureReported } }

    /// Makes ring `ring`'s next `io_uring_enter` fail with `errno` (fault injection for tests).
    /// Inbox wake-ups ring `ring` got through `MSG_RING` from another ring (tests).
    package func inboxWakesByMessageRing(ring: Int) -> UInt64 {
        port(ofRing: ring)?.inboxWakesByMessageRing.load(ordering: .relaxed) ?? 0
    }

    package func injectEnterFailure(ring: Int, _ errno: Errno) {
        state.withLock { s in
            guard let mailboxes = s.lifecycle.mailboxes, ring >= 0 && ring < mailboxes.count else { return }
            mailboxes.ports[ring].injectedFault.store(errno.rawValue, ordering: .releasing)
            mailboxes.ports[ring].wake.signal()
        }
    }

    /// Sets the faults this server meets (tests). Call before ``start()``.
    package func inject(_ faults: FaultInjection) {
        state.withLock { $0.faults = faults }
    }

    /// Asks every ring to stop: no new accepts, every connection cancelled and closed, the ring
    /// exited. Safe from any thread, at any time, any number of times; returns at once (see
    /// ``wait()``). A stop before ``start()`` makes the start throw ``ServerError/stopped``; a stop
    /// while starting is delivered as soon as the rings exist.
    public func stop() {
        stop { $0.stopRequested() }
    }

    /// A stop, or a ring's failure: the rings are woken under the lock, so the final transition
    /// (which closes their eventfds) cannot come between deciding to wake and writing.
    func stop(_ event: (inout ServerLifecycle) -> ServerLifecycle.StopAction) {
        let action = state.withLock { s in
            let action = event(&s.lifecycle)
            if case .wake(let mailboxes) = action {
                mailboxes.stopRequested.store(true, ordering: .releasing)
                mailboxes.wakeAll()
            }
            return action
        }
        if case .stoppedBeforeStart = action {
            stopped.leave()
            started(.failure(.stopped))
        }
    }

    /// A ring thread has released its ring, loop and listener. After the last one nothing reads or
    /// writes the wake-up eventfds (the lifecycle no longer hands out mailboxes): they are closed,
    /// and the server has stopped.
    func ringThreadEnded() {
        let mailboxes = state.withLock { s in
            let mailboxes = s.lifecycle.mailboxes
            return s.lifecycle.ringThreadEnded() ? mailboxes : nil
        }
        guard let mailboxes else { return }
        mailboxes.closeWakeDescriptors()
        stopped.leave()
    }

    /// Leaves the group of running rings and waits until every ring has left it, holding this
    /// ring (and its descriptor) meanwhile: see ``ringsRunning``.
    func ringEnded(_ ring: Int, _ mailboxes: Mailboxes) {
        mailboxes.ports[ring].exited.store(true, ordering: .releasing)
        ringsRunning.leave()
        ringsRunning.wait()
    }

    /// Blocks until the server has stopped: every ring thread has exited and released its ring,
    /// listener and connections (after ``stop()``, or a ring's failure). Before ``start()`` it
    /// waits for a start and a stop; after a stop that came before any start it returns at once.
    public func wait() {
        stopped.wait()
    }

    /// Starts, then blocks until the server is stopped (by ``stop()`` from another thread).
    /// - Throws: ``ServerError`` from ``start()``.
    public func run() throws(ServerError) {
        guard try startUnlessStopped() else { return }
        wait()
        if let failure { throw failure }
    }

    /// Waits without blocking a thread until every ring has exited.
    public func waitUntilStopped() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            stopped.notify(queue: .global()) { continuation.resume() }
        }
    }

    func publish(thread: Int, _ snapshot: ServerStatistics, report: Bool) {
        let previous = state.withLock { s in
            s.perThread[thread] = snapshot
            if !report { return nil as ServerStatistics? }
            let p = s.reported[thread]
            s.reported[thread] = snapshot
            return p
        }
        if let previous { metrics[thread].record(previous: previous, current: snapshot) }
    }
}
