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
    let finished = DispatchGroup()
    let metrics: ServerMetrics

    struct State {
        var started = false
        var wakeFDs: [Int32] = []
        var mailboxes: Mailboxes?
        var perThread: [ServerStatistics] = []
        var reported: [ServerStatistics] = []
        var boundAddress: SocketAddress?
        var setupErrors: [URingError] = []
        var failure: ServerError?
    }

    /// Creates a server; nothing is bound until ``start()``.
    /// - Parameters:
    ///   - configuration: what to serve and how.
    ///   - logger: where episodes (accept pauses, fallbacks, errors) and statistics are logged.
    ///   - makeHandler: makes one handler per ring thread.
    public init(
        configuration: ServerConfiguration, logger: Logger = Logger(label: "uring-echo"),
        makeHandler: @escaping @Sendable () -> Handler
    ) {
        self.configuration = configuration
        self.logger = logger
        self.makeHandler = makeHandler
        self.metrics = ServerMetrics()
    }

    /// Where the server listens, once started (the real port when configured with port 0).
    public var boundAddress: SocketAddress? { state.withLock { $0.boundAddress } }

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
        let already = state.withLock { s in
            let was = s.started
            s.started = true
            return was
        }
        if already { throw .alreadyStarted }
        let threads = configuration.threads
        var listeners: [Int32] = []
        var wakes: [Int32] = []
        func cleanup() {
            for fd in listeners { _ = try? Sockets.close(fd) }
            for fd in wakes { _ = try? Sockets.close(fd) }
        }
        var bound: SocketAddress
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
        } catch {
            cleanup()
            throw ServerError(setupFailure: error)
        }
        let mailboxes = Mailboxes(count: threads, capacity: configuration.mailboxBytes, wakeDescriptors: wakes)
        state.withLock {
            $0.mailboxes = mailboxes
            $0.wakeFDs = wakes
            $0.perThread = Array(repeating: ServerStatistics(), count: threads)
            $0.reported = Array(repeating: ServerStatistics(), count: threads)
            $0.boundAddress = bound
        }
        let ready = DispatchSemaphore(value: 0)
        // Every ring starts serving only once all exist, so a post to another ring finds its fd.
        let go = DispatchGroup()
        go.enter()
        for i in 0..<threads {
            finished.enter()
            let listener = listeners[i]
            do throws(URingError) {
                try Posix.startThread(name: "uring-ring-\(i)") { [self] in
                    defer {
                        _ = try? Sockets.close(listener)
                        finished.leave()
                    }
                    runRing(i, listener: listener, mailboxes: mailboxes, ready: ready, go: go)
                }
            } catch {
                _ = try? Sockets.close(listener)
                finished.leave()
                state.withLock { $0.setupErrors.append(error) }
                ready.signal()
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
        let stats = statistics
        logger.info(
            "listening on \(bound) with \(threads) ring(s), mode \(configuration.mode), receive \(configuration.receive), setup \(stats.setupFlags), features \(stats.features)"
        )
    }

    /// Why the server stopped by itself, if it did: a ring ended on an error
    /// (``ServerError/ringFailed(ring:_:)``). `nil` after a requested stop.
    public var failure: ServerError? { state.withLock { $0.failure } }

    /// Makes ring `ring`'s next `io_uring_enter` fail with `errno` (fault injection for tests).
    package func injectEnterFailure(ring: Int, _ errno: Errno) {
        state.withLock { s in
            guard let mailboxes = s.mailboxes, ring < mailboxes.count else { return }
            mailboxes.injectedFaults[ring].value.store(errno.rawValue, ordering: .releasing)
            try? Sockets.signalEventFD(s.wakeFDs[ring])
        }
    }

    /// Asks every ring to stop: no new accepts, every connection cancelled and closed, the ring
    /// exited. Safe from any thread, any number of times; returns at once (see ``wait()``).
    public func stop() {
        // Under the lock, so wait() cannot close the descriptors (and the system reuse their
        // numbers) between reading them and writing to them.
        state.withLock { s in
            s.mailboxes?.stopRequested.store(true, ordering: .releasing)
            for fd in s.wakeFDs { try? Sockets.signalEventFD(fd) }
        }
    }

    /// One ring thread: sets up its ring and loop (with the receive strategy the kernel granted),
    /// reports ready, waits until every ring exists, and serves until stopped.
    func runRing(_ i: Int, listener: Int32, mailboxes: Mailboxes, ready: DispatchSemaphore, go: DispatchGroup) {
        let publisher: (ServerStatistics, Bool) -> Void = { [self] snapshot, report in
            self.publish(thread: i, snapshot, report: report)
        }
        do throws(URingError) {
            var setup = try RingSetup(configuration, ring: i, logger: logger)
            let buffers = setup.buffers.take()
            let core = LoopCore(
                configuration: configuration, setup: setup, providedBase: buffers?.buffer(0).baseAddress,
                ringIndex: i, mailboxes: mailboxes, logger: logger)
            mailboxes.ringDescriptors[i].value.store(core.ring.descriptor, ordering: .releasing)
            if let buffers {
                let receiver = BufferRingReceiver(
                    buffers: buffers, sessions: core.sessions.capacity,
                    maxHeldPerConnection: min(configuration.maxBuffersPerConnection, configuration.bufferRingEntries))
                serve(
                    CompletionLoop(core: core, handler: makeHandler(), receiver: receiver, listener: listener, publish: publisher),
                    ring: i, ready: ready, go: go)
            } else {
                let receiver = SessionBufferReceiver(sessionFirst: core.queue.sessionFirst)
                serve(
                    CompletionLoop(core: core, handler: makeHandler(), receiver: receiver, listener: listener, publish: publisher),
                    ring: i, ready: ready, go: go)
            }
        } catch {
            state.withLock { $0.setupErrors.append(error) }
            ready.signal()
        }
    }

    /// Runs one ring's loop: reports it ready, waits for the others, serves until stopped.
    func serve<R: ReceivePath & ~Copyable>(
        _ loop: CompletionLoop<Handler, R>, ring: Int, ready: DispatchSemaphore, go: DispatchGroup
    ) {
        loop.housekeeping.publishStatistics(loop.core, buffersHeld: loop.receiver.buffersHeld)
        ready.signal()
        go.wait()
        do throws(URingError) {
            try loop.run()
        } catch {
            // A ring that ends on an error takes the server down with it, saying why: a server
            // with a dead ring would keep accepting on the others' listeners and look healthy.
            logger.error("ring \(ring) stopped on error: \(error); stopping the server")
            state.withLock { s in
                if s.failure == nil { s.failure = .ringFailed(ring: ring, error) }
            }
            loop.teardown()
            stop()
        }
    }

    /// Blocks until every ring thread has exited (after ``stop()``).
    public func wait() {
        finished.wait()
        closeWakeDescriptors()
    }

    /// Starts, then blocks until the server is stopped (by ``stop()`` from another thread).
    /// - Throws: ``ServerError`` from ``start()``.
    public func run() throws(ServerError) {
        try start()
        wait()
        if let failure { throw failure }
    }

    /// Waits without blocking a thread until every ring has exited.
    public func waitUntilStopped() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            finished.notify(queue: .global()) { continuation.resume() }
        }
        closeWakeDescriptors()
    }

    func closeWakeDescriptors() {
        let fds = state.withLock { s in
            let fds = s.wakeFDs
            s.wakeFDs = []
            return fds
        }
        for fd in fds { _ = try? Sockets.close(fd) }
    }

    func publish(thread: Int, _ snapshot: ServerStatistics, report: Bool) {
        let previous = state.withLock { s in
            s.perThread[thread] = snapshot
            if !report { return nil as ServerStatistics? }
            let p = s.reported[thread]
            s.reported[thread] = snapshot
            return p
        }
        if let previous { metrics.record(previous: previous, current: snapshot) }
    }
}

extension Server: Service {
    /// Runs as a swift-service-lifecycle `Service`: starts, serves, and stops on graceful shutdown
    /// or task cancellation; returns once every ring has exited.
    /// - Throws: ``ServerError`` from ``start()``.
    public func run() async throws {
        try start()
        await withTaskCancellationHandler {
            await withGracefulShutdownHandler {
                await waitUntilStopped()
            } onGracefulShutdown: {
                self.stop()
            }
        } onCancel: {
            self.stop()
        }
        if let failure { throw failure }
    }
}

/// The echo server: ``Server`` with ``EchoHandler``.
public typealias EchoServer = Server<EchoHandler>

extension Server where Handler == EchoHandler {
    /// An echo server.
    /// - Parameters:
    ///   - configuration: what to serve and how.
    ///   - logger: where to log.
    public convenience init(configuration: ServerConfiguration, logger: Logger = Logger(label: "uring-echo")) {
        self.init(configuration: configuration, logger: logger) { EchoHandler() }
    }
}

/// swift-metrics instruments; with no backend bootstrapped they are no-ops.
struct ServerMetrics: Sendable {
    let accepted = Counter(label: "uring_echo_accepted_total")
    let closed = Counter(label: "uring_echo_closed_total")
    let rejected = Counter(label: "uring_echo_rejected_total")
    let bytesIn = Counter(label: "uring_echo_bytes_in_total")
    let bytesOut = Counter(label: "uring_echo_bytes_out_total")
    let completions = Counter(label: "uring_echo_completions_total")
    let stale = Counter(label: "uring_echo_stale_completions_total")
    let errors = Counter(label: "uring_echo_errors_total")
    let active = Gauge(label: "uring_echo_active_connections")

    func record(previous p: ServerStatistics, current c: ServerStatistics) {
        func delta(_ a: UInt64, _ b: UInt64) -> Int64 { b >= a ? Int64(truncatingIfNeeded: b - a) : 0 }
        accepted.increment(by: delta(p.accepted, c.accepted))
        closed.increment(by: delta(p.closed, c.closed))
        rejected.increment(by: delta(p.rejected, c.rejected))
        bytesIn.increment(by: delta(p.bytesIn, c.bytesIn))
        bytesOut.increment(by: delta(p.bytesOut, c.bytesOut))
        completions.increment(by: delta(p.completions, c.completions))
        stale.increment(by: delta(p.staleCompletions, c.staleCompletions))
        errors.increment(by: delta(p.errors, c.errors))
        active.record(c.active)
    }
}
