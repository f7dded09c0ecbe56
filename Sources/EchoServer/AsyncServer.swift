import Logging
import Metrics
import ServiceLifecycle
import Synchronization
import URing

/// A server written with async/await: each connection is a child task of the server's task
/// group, with its input as an `AsyncSequence` and an async writer, on the same completion loops
/// as ``Server``.
///
/// ```swift
/// let server = AsyncServer(configuration: config)
/// try await server.serve { connection in          // one child task per connection
///     for await chunk in connection.inbound {     // the peer's bytes, until its FIN
///         try await connection.outbound.write(chunk)
///     }
/// }                                               // leaving the closure closes it
/// ```
///
/// Each connection's task prefers its ring's executor (``RingHandle/executor``): it runs on the thread
/// that receives its bytes, between loop turns, so `for await` and writes cost no thread hop.
/// Receiving pauses while a connection's consumer lags (its unread chunks count in its share of
/// receive buffers); a write waits while the connection's output is at its bound. The peer's FIN
/// ends `inbound`; writing may go on until the closure returns. Leaving the closure closes the
/// connection once what is queued is sent; a thrown error aborts that connection only.
///
/// Cancelling the task that runs ``serve(_:)`` (or ``stop()``, or a `ServiceGroup`'s graceful
/// shutdown) stops the server: every `inbound` ends, every connection closes, every task ends.
public final class AsyncServer: Sendable {
    let server: Server<AsyncBridge>
    let rings: [AsyncRing]
    private let body: (@Sendable (AsyncConnection) async throws -> Void)?
    /// The ring the next ``withConnection(to:timeout:_:)`` from outside the rings connects from.
    let nextConnectRing = Atomic<Int>(0)

    /// A server; nothing is bound until ``serve(_:)`` (or ``run()``).
    /// - Parameters:
    ///   - configuration: what to serve and how.
    ///   - logger: where to log.
    ///   - listeners: other addresses to serve, each with its own (sync) handler (``Listener``).
    ///   - metricsFactory: the swift-metrics backend; `nil` for the bootstrapped one.
    public convenience init(
        configuration: ServerConfiguration, logger: Logger = Logger(label: "uring-echo"), listeners: [Listener] = [],
        metricsFactory: (any MetricsFactory)? = nil
    ) {
        self.init(configuration, logger, listeners, metricsFactory, body: nil)
    }

    /// A server that serves each connection with `body` when it runs (``run()``, as a
    /// swift-service-lifecycle `Service`).
    /// - Parameters:
    ///   - configuration: what to serve and how.
    ///   - logger: where to log.
    ///   - listeners: other addresses to serve (``Listener``).
    ///   - metricsFactory: the swift-metrics backend; `nil` for the bootstrapped one.
    ///   - body: serves one connection; see ``serve(_:)``.
    public convenience init(
        configuration: ServerConfiguration, logger: Logger = Logger(label: "uring-echo"), listeners: [Listener] = [],
        metricsFactory: (any MetricsFactory)? = nil, body: @escaping @Sendable (AsyncConnection) async throws -> Void
    ) {
        self.init(configuration, logger, listeners, metricsFactory, body: body)
    }

    private init(
        _ configuration: ServerConfiguration, _ logger: Logger, _ listeners: [Listener],
        _ metricsFactory: (any MetricsFactory)?, body: (@Sendable (AsyncConnection) async throws -> Void)?
    ) {
        let rings = (0..<max(1, min(configuration.threads, 256))).map { AsyncRing(index: $0) }
        self.rings = rings
        self.body = body
        server = Server(
            configuration: configuration, logger: logger, listeners: listeners, metricsFactory: metricsFactory,
            makeRingHandler: { AsyncBridge(ring: rings[$0]) })
    }

    /// Where the server listens, once it does.
    public var boundAddress: SocketAddress? { server.boundAddress }

    /// Waits until the server listens, and returns where (the real port when configured with
    /// port 0): for code beside a task that runs ``serve(_:)`` (``Server/listeningAddress``).
    /// - Throws: the error ``serve(_:)`` failed to start with.
    public var listeningAddress: SocketAddress {
        get async throws { try await server.listeningAddress }
    }

    /// Ring `ring`, for any thread or task (``Server/ring(_:)``), once the server listens.
    /// - Parameter ring: `0..<configuration.threads`.
    public func ring(_ ring: Int) -> RingHandle? { server.ring(ring) }

    /// The counters summed over all rings (``Server/statistics``).
    public var statistics: ServerStatistics { server.statistics }

    /// Makes ring `ring`'s next `io_uring_enter` (under the epoll driver, its wait) fail with `errno` (tests).
    package func injectEnterFailure(ring: Int, _ errno: Errno) { server.injectEnterFailure(ring: ring, errno) }

    /// Asks every ring to stop; ``serve(_:)`` returns once everything has ended. Safe from any
    /// thread, at any time.
    public func stop() { server.stop() }

    /// Why the server stopped by itself, if it did (``Server/failure``).
    public var failure: ServerError? { server.failure }

    /// Starts the server and serves every connection with `body`, each in its own child task, until
    /// the calling task is cancelled or the server is stopped; then every connection closes and
    /// every task ends before this returns.
    /// - Parameter body: serves one connection. Leaving it closes the connection once what is
    ///   queued is sent; a thrown error aborts the connection (and ends nothing else).
    /// - Throws: ``ServerError`` when the server cannot start or a ring fails.
    public func serve(_ body: @escaping @Sendable (AsyncConnection) async throws -> Void) async throws {
        do throws(ServerError) {
            // ``Server/start()``, with the rings attached before anyone learns that the server
            // listens (``listeningAddress``): a connect from then on finds its ring.
            let address = try server.startRings()
            for ring in rings {
                if let port = server.port(ofRing: ring.index) { ring.attach(port) }
            }
            server.started(.success(address))
        } catch {
            if error != .alreadyStarted { server.started(.failure(error)) }
            if error == .stopped { return }
            throw error
        }
        await withTaskCancellationHandler {
            await withDiscardingTaskGroup { group in
                for ring in rings {
                    guard let executor = ring.executor else { continue }
                    group.addTask(executorPreference: executor) {
                        // The ring's connections, each in its own task (preferring the ring too).
                        await withDiscardingTaskGroup { connections in
                            for await connection in ring.accepted {
                                connections.addTask { await Self.run(connection, body) }
                            }
                        }
                    }
                }
                group.addTask {
                    await self.server.waitUntilStopped()
                    for ring in self.rings { ring.acceptedContinuation.finish() }
                }
            }
        } onCancel: {
            self.server.stop()
        }
        if let failure = server.failure { throw failure }
    }

    /// One connection's task: `body`, then close (or abort after an error).
    static func run(_ connection: AsyncConnection, _ body: @Sendable (AsyncConnection) async throws -> Void) async {
        let abort: Bool
        do {
            try await body(connection)
            abort = false
        } catch {
            abort = true
        }
        await connection.finish(abort: abort)
    }
}

extension AsyncServer: Service {
    /// Serves with the closure given at init, as a swift-service-lifecycle `Service`: until
    /// cancelled or a graceful shutdown, then every connection closes and every task ends.
    /// - Throws: ``ServerError``; a server made without a closure has nothing to serve and
    ///   throws ``ServerError/invalidConfiguration(_:)``.
    public func run() async throws {
        guard let body else {
            throw ServerError.invalidConfiguration("AsyncServer.run() needs the init that takes a body; use serve(_:)")
        }
        try await withGracefulShutdownHandler {
            try await serve(body)
        } onGracefulShutdown: {
            self.stop()
        }
    }
}
