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
/// let server = EchoServer(configuration: config)
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
    let makeHandler: @Sendable () -> Handler
    let logger: Logger
    let state = PthreadLock(State())
    /// Left once, when the server has stopped (``ServerLifecycle``): what ``wait()`` waits for.
    let stopped = DispatchGroup()
    /// Every ring thread is in it until its loop has ended: a ring keeps its descriptor open until
    /// all have left, so another ring's `MSG_RING` never reaches a closed or reused number.
    let ringsRunning = DispatchGroup()
    let metrics: [ServerMetrics]
    let metricsEndpoint: MetricsEndpoint?

    struct State {
        var lifecycle = ServerLifecycle()
        var perThread: [ServerStatistics] = []
        var reported: [ServerStatistics] = []
        var boundAddress: SocketAddress?
        var metricsAddress: SocketAddress?
        var setupErrors: [URingError] = []
        var faults = FaultInjection()
    }

    /// Creates a server; nothing is bound until ``start()``.
    /// - Parameters:
    ///   - configuration: what to serve and how.
    ///   - logger: where episodes (accept pauses, fallbacks, errors) and statistics are logged.
    ///   - metrics: an HTTP endpoint serving the metrics exposition, on a ring of this server
    ///     (see ``MetricsEndpoint``); `nil` for none.
    ///   - metricsFactory: the swift-metrics backend the server's counters go to (labelled per
    ///     ring); `nil` for the one bootstrapped with `MetricsSystem.bootstrap` (by default a no-op).
    ///   - makeHandler: makes one handler per ring thread.
    public init(
        configuration: ServerConfiguration, logger: Logger = Logger(label: "uring-echo"),
        metrics: MetricsEndpoint? = nil, metricsFactory: (any MetricsFactory)? = nil,
        makeHandler: @escaping @Sendable () -> Handler
    ) {
        self.configuration = configuration
        self.logger = logger
        self.makeHandler = makeHandler
        self.metricsEndpoint = metrics
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

    /// Where the metrics endpoint listens, once started with one (the real port when configured
    /// with port 0).
    public var metricsAddress: SocketAddress? { state.withLock { $0.metricsAddress } }

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

    /// Binds the listeners and starts the ring threads; returns once every ring is serving.
    /// - Throws: ``ServerError`` for a bad configuration, a second start, or a ring, listener or
    ///   registration that could not be set up (then nothing is left running).
    public func start() throws(ServerError) {
        try configuration.validate()
        try metricsEndpoint?.validate(configuration)
        switch state.withLock({ $0.lifecycle.startRequested() }) {
        case .proceed: break
        case .throwAlreadyStarted: throw .alreadyStarted
        case .throwStopped: throw .stopped
        }
        state.withLock { $0.faults.whileStarting }?()
        let threads = configuration.threads
        var listeners: [Int32] = []
        var wakes: [Int32] = []
        var metricsListener: Int32? = nil
        func cleanup() {
            for fd in listeners { _ = try? Sockets.close(fd) }
            for fd in wakes { _ = try? Sockets.close(fd) }
            if let fd = metricsListener { _ = try? Sockets.close(fd) }
        }
        var bound: SocketAddress
        var metricsBound: SocketAddress? = nil
        do throws(URingError) {
            var address = SocketAddress(host: configuration.host, port: configuration.port)!
            for i in 0..<threads {
                let fd = try Sockets.listen(
                    on: address, backlog: configuration.backlog, reusePort: threads > 1, noDelay: true)
                listeners.append(fd)
                if i == 0 {
                    address = try Sockets.localAddress(fd)
                }
                wakes.append(try Sockets.makeEventFD())
            }
            bound = address
            if let endpoint = metricsEndpoint {
                let fd = try Sockets.listen(
                    on: SocketAddress(host: endpoint.host, port: endpoint.port)!, backlog: 64, reusePort: false,
                    noDelay: true)
                metricsListener = fd
                metricsBound = try Sockets.localAddress(fd)
            }
        } catch {
            cleanup()
            if state.withLock({ $0.lifecycle.startFailed() }) { stopped.leave() }
            throw ServerError(setupFailure: error)
        }
        // From here the mailboxes own the eventfds.
        let mailboxes = Mailboxes(count: threads, capacity: configuration.mailboxBytes, wakeDescriptors: wakes)
        let stopWhileStarting = state.withLock {
            $0.perThread = Array(repeating: ServerStatistics(), count: threads)
            $0.reported = Array(repeating: ServerStatistics(), count: threads)
            $0.boundAddress = bound
            $0.metricsAddress = metricsBound
            return $0.lifecycle.ringsCreated(mailboxes, threads: threads)
        }
        if case .wake = stopWhileStarting { stop() }
        let ready = DispatchSemaphore(value: 0)
        // Every ring starts serving only once all exist, so a post to another ring finds its fd.
        let go = DispatchGroup()
        go.enter()
        for i in 0..<threads {
            ringsRunning.enter()
            let listener = listeners[i]
            let secondary = i == metricsEndpoint?.ring ? metricsListener : nil
            do throws(URingError) {
                try Posix.startThread(name: "uring-ring-\(i)") { [self] in
                    runRing(i, listener: listener, secondary: secondary, mailboxes: mailboxes, ready: ready, go: go)
                    _ = try? Sockets.close(listener)
                    if let secondary { _ = try? Sockets.close(secondary) }
                    ringThreadEnded()
                }
            } catch {
                _ = try? Sockets.close(listener)
                if let secondary { _ = try? Sockets.close(secondary) }
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
        logger.info(
            "listening on \(bound) with \(threads) ring(s), mode \(configuration.mode), receive \(configuration.receive), setup \(stats.setupFlags), features \(stats.features)"
        )
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
    package func injectEnterFailure(ring: Int, _ errno: Errno) {
        state.withLock { s in
            guard let mailboxes = s.lifecycle.mailboxes, ring >= 0 && ring < mailboxes.count else { return }
            mailboxes.ports[ring].injectedFault.store(errno.rawValue, ordering: .releasing)
            try? Sockets.signalEventFD(mailboxes.ports[ring].wakeFD)
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
        if case .stoppedBeforeStart = action { stopped.leave() }
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
