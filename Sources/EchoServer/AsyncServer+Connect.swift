import Synchronization
import URing

extension AsyncServer {
    /// Opens a connection to `address` and serves it with `body`: the `ConnectEx` of the async
    /// API, for a server that talks to something behind it (a backend, an upstream).
    ///
    /// The connection is made by one of the server's rings (``RingContext/connect(to:timeout:)``:
    /// in pooled mode a socket made straight into a registered-file slot): the ring the calling
    /// task runs on (a connection's task in ``serve(_:)``, so both connections share its thread),
    /// else the next ring in turn. `body` runs on that ring's thread, with the same
    /// ``AsyncConnection`` API as an accepted connection's (``AsyncConnection/isOutbound``).
    /// Leaving `body` closes the connection once what is queued is sent; a thrown error aborts it.
    ///
    /// ```swift
    /// try await server.serve { client in
    ///     try await server.withConnection(to: backend) { upstream in
    ///         for await chunk in client.inbound { try await upstream.outbound.write(chunk) }
    ///     }
    /// }
    /// ```
    ///
    /// Outbound connections have their own cap (``ServerConfiguration/maxOutboundConnections``,
    /// 0 by default: set it to connect at all). Cancelling the calling task cancels a connect in
    /// flight.
    /// - Parameters:
    ///   - address: the peer.
    ///   - timeout: how long the connect may take.
    ///   - body: uses the connection.
    /// - Returns: what `body` returns.
    /// - Throws: a ``ConnectFailure`` when the connect fails (``ConnectFailure/capReached`` over
    ///   the cap, ``ConnectFailure/cancelled`` when the server is not serving or stops, or the
    ///   task is cancelled), or what `body` throws.
    public func withConnection<Result>(
        to address: SocketAddress, timeout: Duration = .seconds(10), _ body: (AsyncConnection) async throws -> Result
    ) async throws -> Result {
        if let ring = rings.first(where: { $0.attachedExecutor?.isCurrent == true }) {
            return try await Self.withConnection(on: ring, to: address, timeout: timeout, body)
        }
        // From elsewhere: the next ring in turn, with the whole exchange on its thread.
        let turn = UInt(bitPattern: nextConnectRing.wrappingAdd(1, ordering: .relaxed).oldValue)
        let ring = rings[Int(turn % UInt(rings.count))]
        guard let executor = ring.attachedExecutor, !executor.hasExited else { throw ConnectFailure.cancelled }
        return try await withTaskExecutorPreference(executor) {
            guard ring.onRing else { throw ConnectFailure.cancelled }
            return try await Self.withConnection(on: ring, to: address, timeout: timeout, body)
        }
    }

    /// Connects from `ring` (the caller runs on its thread), runs `body`, then closes.
    private static func withConnection<Result>(
        on ring: AsyncRing, to address: SocketAddress, timeout: Duration, _ body: (AsyncConnection) async throws -> Result
    ) async throws -> Result {
        let connection: AsyncConnection
        switch await ring.connect(to: address, timeout: timeout) {
        case .failure(let failure): throw failure
        case .success(let connected): connection = connected
        }
        do {
            let result = try await body(connection)
            await connection.finish(abort: false)
            return result
        } catch {
            await connection.finish(abort: true)
            throw error
        }
    }
}
