import URing

/// Another address the server listens on, beside its main one, served by a handler of its own on
/// one of the rings: an admin or metrics endpoint, say, in the same loop as the main protocol.
///
/// Its connections have sessions of their own beside the connection cap (``maxConnections`` plus
/// one, so a handler that evicts can take a new connection when full), so they never take a main
/// connection's place and still get in when the main side is full. They are counted apart: in
/// ``ServerStatistics/endpointConnections``, not in `accepted`, `closed`, `active`, `bytesIn` or
/// `bytesOut`. ``Connection/listener`` tells a handler which listener accepted a connection.
public struct Listener: Sendable {
    /// What it is, for messages (`metrics endpoint`).
    public var name: String
    /// The address to bind (numeric IPv4 or IPv6).
    public var host: String
    /// The port; 0 picks a free one (``Server/listenerAddresses`` tells which).
    public var port: UInt16
    /// The ring that serves it, `0..<threads`.
    public var ring: Int = 0
    /// Its connections open at once, 1...1024.
    public var maxConnections: Int = 16
    /// The `listen(2)` backlog, 1...65535.
    public var backlog: Int32 = 64
    /// Makes the handler of its connections, once, on its ring's thread. Ring messages go to the
    /// main handler, not to this one.
    public var makeHandler: @Sendable () -> any ConnectionHandler
    /// What it needs of the server's configuration: a sentence saying what is wrong, or nil.
    public var requirements: @Sendable (ServerConfiguration) -> String? = { _ in nil }

    /// A listener.
    /// - Parameters:
    ///   - name: what it is, for messages.
    ///   - host: the address to bind.
    ///   - port: the port; 0 picks one.
    ///   - makeHandler: makes the handler of its connections.
    public init(
        name: String, host: String = "127.0.0.1", port: UInt16, makeHandler: @escaping @Sendable () -> any ConnectionHandler
    ) {
        self.name = name
        self.host = host
        self.port = port
        self.makeHandler = makeHandler
    }

    /// Checks it against the server's configuration.
    /// - Throws: ``ServerError/invalidConfiguration(_:)`` naming the listener and the value.
    func validate(_ configuration: ServerConfiguration) throws(ServerError) {
        func check(_ ok: Bool, _ why: @autoclosure () -> String) throws(ServerError) {
            if !ok { throw .invalidConfiguration("\(name): \(why())") }
        }
        try check(SocketAddress(host: host, port: port) != nil, "host '\(host)' is not a numeric IPv4 or IPv6 address")
        try check(
            (0..<configuration.threads).contains(ring),
            "ring must be 0...\(configuration.threads - 1) (threads \(configuration.threads)), got \(ring)")
        try check((1...1024).contains(maxConnections), "maxConnections must be 1...1024, got \(maxConnections)")
        try check((1...65535).contains(backlog), "backlog must be 1...65535, got \(backlog)")
        if let problem = requirements(configuration) { try check(false, problem) }
    }
}
