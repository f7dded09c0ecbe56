import Prometheus
import SocketPool
import URing

/// An HTTP endpoint serving the Prometheus text exposition at `GET /metrics`, on a ring of the
/// server itself: its own listener, its connections served by ``MetricsHTTPHandler`` through the
/// same completion loop as the server's protocol, beside it.
///
/// ```swift
/// let registry = PrometheusCollectorRegistry()
/// MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
/// let server = Server(configuration: config, metrics: MetricsEndpoint(port: 9100, registry: registry)) {
///     MyHandler()
/// }
/// ```
///
/// The server appends its own completions-per-turn histogram (`uring_echo_completions_per_turn`,
/// labelled per ring) to what `exposition` writes. Counters reach the backend once per tick, so
/// ``ServerConfiguration/tickInterval`` must be at most one second: values are never older.
public struct MetricsEndpoint: Sendable {
    /// The address to bind (numeric IPv4 or IPv6).
    public var host: String
    /// The port; 0 picks a free one (``Server/metricsAddress`` tells which).
    public var port: UInt16
    /// The ring that serves it, `0..<threads`.
    public var ring: Int = 0
    /// Metrics connections open at once (1...1024), in sessions of their own beside the server's
    /// connection cap; a new one replaces the oldest.
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

    func validate(_ configuration: ServerConfiguration) throws(ServerError) {
        func check(_ ok: Bool, _ why: String) throws(ServerError) {
            if !ok { throw .invalidConfiguration("metrics endpoint: \(why)") }
        }
        try check(
            SocketAddress(host: host, port: port) != nil, "host '\(host)' is not a numeric IPv4 or IPv6 address")
        try check(
            (0..<configuration.threads).contains(ring),
            "ring must be 0...\(configuration.threads - 1) (threads \(configuration.threads)), got \(ring)")
        try check((1...1024).contains(maxConnections), "maxConnections must be 1...1024, got \(maxConnections)")
        try check(
            (256...1 << 20).contains(maxRequestBytes), "maxRequestBytes must be 256...1048576, got \(maxRequestBytes)")
        // Answers go out in chunks of up to 16 KiB, at most 64 KiB queued per connection.
        try check(
            configuration.maxOutputBytesPerConnection >= 1 << 16,
            "maxOutputBytesPerConnection must be at least 65536 to serve it, got \(configuration.maxOutputBytesPerConnection)")
        try check(
            configuration.outboundBuffers * configuration.bufferSize >= 1 << 17,
            "outboundBuffers x bufferSize must be at least 131072 bytes to serve it, got \(configuration.outboundBuffers * configuration.bufferSize)")
        try check(
            configuration.tickInterval <= .seconds(1),
            "tickInterval must be at most 1 s so that values are at most a second old, got \(configuration.tickInterval)")
    }
}

/// Routes each connection to one of two handlers by the listener that accepted it: the server's
/// protocol on its main listener, a second one (the metrics endpoint) on the secondary listener.
/// Ring messages go to the main handler.
struct ListenerRouter<Main: ConnectionHandler, Side: ConnectionHandler>: ConnectionHandler {
    var main: Main
    var side: Side
    var isSide: [Bool] = []

    mutating func start(capacity: Int) {
        main.start(capacity: capacity)
        side.start(capacity: capacity)
        isSide = Array(repeating: false, count: capacity)
    }

    mutating func opened(_ connection: Connection) {
        let secondary = connection.listener == 1
        isSide[connection.index] = secondary
        if secondary { side.opened(connection) } else { main.opened(connection) }
    }

    mutating func received(_ bytes: UnsafeMutableRawBufferPointer, connection: Connection) -> Reply {
        isSide[connection.index] ? side.received(bytes, connection: connection) : main.received(bytes, connection: connection)
    }

    mutating func writable(_ connection: Connection) {
        if isSide[connection.index] { side.writable(connection) } else { main.writable(connection) }
    }

    mutating func closed(_ connection: ConnectionID) {
        if isSide[connection.index] { side.closed(connection) } else { main.closed(connection) }
    }

    mutating func received(message: RingMessage, ring: RingContext) { main.received(message: message, ring: ring) }
}
