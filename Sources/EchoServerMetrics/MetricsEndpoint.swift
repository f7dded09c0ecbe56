import EchoServer
import Logging
import Metrics
import Prometheus
import URing

/// An HTTP endpoint serving the Prometheus text exposition at `GET /metrics`, on a ring of the
/// server itself: its own listener, its connections served by ``MetricsHTTPHandler`` through the
/// same completion loop as the server's protocol, beside it.
///
/// ```swift
/// let registry = PrometheusCollectorRegistry()
/// MetricsSystem.bootstrap(PrometheusMetricsFactoryWithHelp(registry: registry))
/// let server = Server(configuration: config, metrics: MetricsEndpoint(port: 9100, registry: registry)) {
///     MyHandler()
/// }
/// ```
///
/// The server appends its own completions-per-turn histogram (`uring_echo_completions_per_turn`,
/// labelled per ring) to what `exposition` writes. Counters reach the backend once per tick, so
/// the configuration's `tickInterval` must be at most one second: values are never older.
public struct MetricsEndpoint: Sendable {
    /// The address to bind (numeric IPv4 or IPv6).
    public var host: String
    /// The port; 0 picks a free one (`Server.metricsAddress` tells which).
    public var port: UInt16
    /// The ring that serves it, `0..<threads`.
    public var ring: Int = 0
    /// Metrics connections served at once (1...1024), in sessions of their own beside the server's
    /// connection cap. Over it a new connection waits for a place (as many as this wait, within
    /// 1024 in all); one idle for a second gives way to a waiter that has sent its request, a
    /// connection mid-request or mid-answer never does.
    public var maxConnections: Int = 16
    /// The largest request head (request line and headers, and any body), 256...1048576 bytes;
    /// a larger one is answered 431 and the connection closed.
    public var maxRequestBytes: Int = 8192
    /// Writes the exposition (Prometheus text format) into the buffer it is given.
    public var exposition: @Sendable (inout [UInt8]) -> Void

    /// An endpoint serving what `exposition` writes.
    /// - Parameters:
    ///   - host: the address to bind.
    ///   - port: the port; 0 picks one.
    ///   - exposition: appends the exposition to its argument.
    public init(host: String = "127.0.0.1", port: UInt16, exposition: @escaping @Sendable (inout [UInt8]) -> Void) {
        self.host = host
        self.port = port
        self.exposition = exposition
    }

    /// An endpoint serving a swift-prometheus registry (the one `PrometheusMetricsFactory` fills).
    /// - Parameters:
    ///   - host: the address to bind.
    ///   - port: the port; 0 picks one.
    ///   - registry: the registry to emit.
    public init(host: String = "127.0.0.1", port: UInt16, registry: PrometheusCollectorRegistry) {
        self.init(host: host, port: port) { registry.emit(into: &$0) }
    }

    /// The endpoint as one of a server's ``Listener``s: ``MetricsHTTPHandler`` serving
    /// ``exposition`` and, after it, the server's own completions-per-turn histogram.
    func listener(histograms: ServerHistograms) -> Listener {
        let (exposition, maxConnections, maxRequestBytes) = (exposition, maxConnections, maxRequestBytes)
        // As many again may wait for a place (MetricsHTTPHandler admits them as places free), and
        // one more is let in to displace a waiter that has sent no request; within the listener's
        // own bound (an out-of-range maxConnections is named by the requirements below). The
        // listener's sessions are its cap plus one: the newcomer's.
        let served = min(max(maxConnections, 1), 1024)
        let cap = min(2 * served + 1, 1024)
        var listener = Listener(name: "metrics endpoint", host: host, port: port) {
            MetricsHTTPHandler(maxConnections: maxConnections, maxWaiting: cap - served, maxRequestBytes: maxRequestBytes) { buffer in
                exposition(&buffer)
                histograms.append(to: &buffer)
            }
        }
        listener.ring = ring
        listener.maxConnections = cap
        listener.requirements = { configuration in
            if !(1...1024).contains(maxConnections) {
                return "maxConnections must be 1...1024, got \(maxConnections)"
            }
            if !(256...1 << 20).contains(maxRequestBytes) {
                return "maxRequestBytes must be 256...1048576, got \(maxRequestBytes)"
            }
            // Answers go out in chunks of up to 16 KiB, at most 64 KiB queued per connection.
            if configuration.maxOutputBytesPerConnection < 1 << 16 {
                return "maxOutputBytesPerConnection must be at least 65536 to serve it, got \(configuration.maxOutputBytesPerConnection)"
            }
            if configuration.outboundBuffers * configuration.bufferSize < 1 << 17 {
                return "outboundBuffers x bufferSize must be at least 131072 bytes to serve it, got \(configuration.outboundBuffers * configuration.bufferSize)"
            }
            if configuration.tickInterval > .seconds(1) {
                return "tickInterval must be at most 1 s so that values are at most a second old, got \(configuration.tickInterval)"
            }
            return nil
        }
        return listener
    }
}

extension Server {
    /// A server that also serves `metrics`: a ``MetricsEndpoint`` on one of its rings, beside the
    /// protocol `makeHandler` serves (one of the server's other listeners, `Listener`).
    /// - Parameters:
    ///   - configuration: what to serve and how.
    ///   - logger: where to log.
    ///   - metrics: the endpoint; `nil` for none.
    ///   - metricsFactory: the swift-metrics backend; `nil` for the bootstrapped one.
    ///   - makeHandler: makes one handler per ring thread.
    public convenience init(
        configuration: ServerConfiguration, logger: Logger = Logger(label: "uring-echo"), metrics: MetricsEndpoint?,
        metricsFactory: (any MetricsFactory)? = nil, makeHandler: @escaping @Sendable () -> Handler
    ) {
        let histograms = ServerHistograms()
        self.init(
            configuration: configuration, logger: logger,
            listeners: metrics.map { [$0.listener(histograms: histograms)] } ?? [], metricsFactory: metricsFactory,
            makeHandler: makeHandler)
        let rings = configuration.threads
        // The exposition runs only on a ring of this server, which holds the server while it runs:
        // no weak reference is needed (and none is kept, so no cycle through the listener either).
        histograms.source.withLock {
            $0 = { [unowned(unsafe) self] in (0..<rings).compactMap { self.statistics(ring: $0)?.completionsPerTurn } }
        }
    }

    /// Where the metrics endpoint listens, once started with one (the real port when configured
    /// with port 0).
    public var metricsAddress: SocketAddress? { address(ofListener: "metrics endpoint") }
}

extension Server where Handler == EchoHandler {
    /// An echo server that also serves `metrics`.
    /// - Parameters:
    ///   - configuration: what to serve and how.
    ///   - logger: where to log.
    ///   - metrics: the endpoint; `nil` for none.
    ///   - metricsFactory: the swift-metrics backend; `nil` for the bootstrapped one.
    public convenience init(
        configuration: ServerConfiguration, logger: Logger = Logger(label: "uring-echo"), metrics: MetricsEndpoint?,
        metricsFactory: (any MetricsFactory)? = nil
    ) {
        self.init(configuration: configuration, logger: logger, metrics: metrics, metricsFactory: metricsFactory) {
            EchoHandler()
        }
    }
}
