import EchoServer
import Foundation
import Glibc
import SocketPool
import Synchronization
import TestSupport
import URing
import XCTest

/// `AsyncServer.withConnection(to:)` on real rings: outbound connections in the async API, in
/// front of a real io_uring echo server.
final class AsyncConnectTests: ServerTestCase {
    /// An async server whose connections' closure is made with the server itself (to connect from
    /// it), serving in a task; `test` gets the server and its port. Afterwards everything must
    /// have ended, outbound connections included, with no descriptor left.
    func withConnectingServer(
        _ configuration: ServerConfiguration, file: StaticString = #filePath, line: UInt = #line,
        body: @escaping @Sendable (AsyncServer, AsyncConnection) async throws -> Void,
        _ test: (AsyncServer, UInt16) async throws -> Void
    ) async throws {
        try await Task.sleep(for: .milliseconds(1))  // the runtime's timer descriptors, before the baseline
        let baseline = openDescriptorCount()
        let server = AsyncServer(configuration: configuration)
        let serving = Task { try await server.serve { try await body(server, $0) } }
        _ = try await server.listeningAddress
        var failure: (any Error)?
        do { try await test(server, try XCTUnwrap(server.boundAddress).port) } catch { failure = error }
        serving.cancel()
        try await serving.value
        let s = server.statistics
        let label = "\(configuration.mode)/\(configuration.receive)"
        XCTAssertEqual(s.active, 0, "\(label): no accepted connection left", file: file, line: line)
        XCTAssertEqual(s.outboundActive, 0, "\(label): no outbound connection left", file: file, line: line)
        XCTAssertEqual(s.sessions.inUse, 0, "\(label): sessions back", file: file, line: line)
        XCTAssertEqual(s.buffersHeld, 0, "\(label): every buffer given back once", file: file, line: line)
        // The peer server may still be closing its side (descriptors on epoll): see withServer.
        _ = eventually { openDescriptorCount() == baseline }
        XCTAssertEqual(openDescriptorCount(), baseline, "\(label): descriptors back to baseline", file: file, line: line)
        if let failure { throw failure }
    }

    func connectingConfig(_ mode: PoolMode, _ receive: ReceiveStrategy, threads: Int = 1) -> ServerConfiguration {
        var c = config(mode, receive)
        c.threads = threads
        c.maxConnections = 64
        c.maxOutboundConnections = 64
        return c
    }

    /// An io_uring echo server to connect to, for the length of `body`.
    func withEchoUpstream<T>(_ body: (SocketAddress) async throws -> T) async throws -> T {
        var c = config(.pooled, .bufferRing)
        c.maxConnections = 128
        let upstream = Server(configuration: c)
        try upstream.start()
        defer {
            upstream.stop()
            upstream.wait()
        }
        return try await body(try XCTUnwrap(upstream.boundAddress))
    }

    /// A relay written with the async API: the client's bytes to the upstream and back, each FIN
    /// passed on.
    static func relay(to upstream: SocketAddress, sameRing: Locked<[Bool]>) -> @Sendable (AsyncServer, AsyncConnection) async throws -> Void {
        { server, client in
            try await server.withConnection(to: upstream, timeout: .seconds(2)) { backend in
                sameRing.with { $0.append(backend.id.ring == client.id.ring && backend.isOutbound && !client.isOutbound) }
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask {
                        for await chunk in client.inbound { try await backend.outbound.write(chunk) }
                        await backend.outbound.finish()
                    }
                    for await chunk in backend.inbound { try await client.outbound.write(chunk) }
                    try await group.waitForAll()
                }
            }
        }
    }

    func testAnAsyncRelayConnectsFromTheClientsRingAndPassesBytesAndFINsOn() async throws {
        try await withEchoUpstream { upstream in
            for (mode, receive) in Self.variants {
                let sameRing = Locked<[Bool]>([])
                try await withConnectingServer(
                    connectingConfig(mode, receive, threads: 2), body: Self.relay(to: upstream, sameRing: sameRing)
                ) { server, port in
                    // 4 MB each way at once, then the client's FIN: the echo's rest comes back and
                    // the relay closes the client (readExactly, then the end).
                    let s = try TestSocket.connect(port: port)
                    defer { s.close() }
                    s.setTimeout(seconds: 30)
                    let bytes = patternBytes(seed: 21, count: 4 << 20)
                    let writer = SocketWriter(s, bytes, then: { s.shutdownWrite() })
                    defer { writer.stop() }
                    let back = try s.readToEnd()
                    XCTAssertTrue(back == bytes, "\(mode)/\(receive): \(back.count) of \(bytes.count) bytes back, in order")
                    // Many at once, over both rings.
                    let ok = Locked(0)
                    parallel(8) { t in
                        for i in 0..<10 {
                            let b = patternBytes(seed: UInt64(t * 100 + i), count: 5000)
                            if (try? Self.roundTrip(port: port, b)) == b { ok.with { $0 += 1 } }
                        }
                    }
                    XCTAssertEqual(ok.get, 80, "\(mode)/\(receive)")
                    XCTAssertTrue(eventually { server.statistics.connects == 81 && server.statistics.outboundClosed == 81 })
                    XCTAssertEqual(sameRing.get, Array(repeating: true, count: 81), "each backend on its client's ring")
                }
            }
        }
    }

    func testAConnectFromOutsideTheRingsRunsItsBodyOnARing() async throws {
        try await withEchoUpstream { upstream in
            try await withConnectingServer(connectingConfig(.pooled, .bufferRing, threads: 2), body: { _, _ in }) { server, _ in
                for round in 0..<4 {
                    let (echoed, ring, outbound) = try await server.withConnection(to: upstream) { backend in
                        try await backend.outbound.write("hello \(round)")
                        await backend.outbound.finish()
                        var got: [UInt8] = []
                        for await chunk in backend.inbound { got += chunk.bytes }
                        let name = (try? readFile("/proc/thread-self/comm")) ?? "?"
                        return (String(decoding: got, as: UTF8.self), name, backend.isOutbound)
                    }
                    XCTAssertEqual(echoed, "hello \(round)")
                    XCTAssertTrue(ring.hasPrefix("uring-ring-"), "the body runs on a ring's thread: \(ring)")
                    XCTAssertTrue(outbound)
                }
                XCTAssertTrue(eventually { server.statistics.connects == 4 && server.statistics.outboundActive == 0 })
            }
        }
    }

    func testFailedConnectsThrowTheirCause() async throws {
        let closedPort = try ConnectTests.portNobodyListensOn()
        let (listener, fullPort) = try ConnectTests.fullListener()
        defer {
            for fd in listener { close(fd) }
        }
        for (mode, receive) in [(PoolMode.pooled, ReceiveStrategy.bufferRing), (PoolMode.unpooled, ReceiveStrategy.perSessionBuffer)] {
            try await withConnectingServer(connectingConfig(mode, receive), body: { _, _ in }) { server, _ in
                func failure(_ port: UInt16, timeout: Duration = .seconds(2)) async -> ConnectFailure? {
                    do {
                        try await server.withConnection(to: SocketAddress(host: "127.0.0.1", port: port)!, timeout: timeout) { _ in
                            XCTFail("connected to \(port)")
                        }
                        return nil
                    } catch {
                        return error as? ConnectFailure
                    }
                }
                let refused = await failure(closedPort)
                XCTAssertEqual(refused, .refused, "\(mode)")
                let started = ContinuousClock.now
                let timedOut = await failure(fullPort, timeout: .milliseconds(300))
                XCTAssertEqual(timedOut, .timedOut, "\(mode)")
                XCTAssertLessThan(ContinuousClock.now - started, .seconds(3))
                XCTAssertTrue(eventually { server.statistics.connectsRefused == 1 && server.statistics.connectsTimedOut == 1 })
            }
        }
        // No outbound connections configured: the cap, at once.
        try await withConnectingServer(config(.pooled, .bufferRing), body: { _, _ in }) { server, _ in
            do {
                try await server.withConnection(to: SocketAddress(host: "127.0.0.1", port: closedPort)!) { _ in }
                XCTFail("connected without outbound connections")
            } catch let error as ConnectFailure {
                XCTAssertEqual(error, .capReached)
            }
        }
        // Not serving: cancelled, with nothing to connect from.
        let idle = AsyncServer(configuration: connectingConfig(.pooled, .bufferRing))
        do {
            try await idle.withConnection(to: SocketAddress(host: "127.0.0.1", port: closedPort)!) { _ in }
            XCTFail("connected from a server that is not serving")
        } catch let error as ConnectFailure {
            XCTAssertEqual(error, .cancelled)
        }
    }

    func testCancellingTheTaskCancelsItsConnectAndAStopEndsTheRest() async throws {
        let (listener, fullPort) = try ConnectTests.fullListener()
        defer {
            for fd in listener { close(fd) }
        }
        let address = SocketAddress(host: "127.0.0.1", port: fullPort)!
        try await withConnectingServer(connectingConfig(.pooled, .bufferRing), body: { _, _ in }) { server, _ in
            let connecting = Task { () -> ConnectFailure? in
                do {
                    try await server.withConnection(to: address, timeout: .seconds(30)) { _ in }
                    return nil
                } catch {
                    return error as? ConnectFailure
                }
            }
            XCTAssertTrue(eventually { server.statistics.outboundActive == 1 })
            let started = ContinuousClock.now
            connecting.cancel()
            let failure = await connecting.value
            XCTAssertEqual(failure, .cancelled)
            XCTAssertLessThan(ContinuousClock.now - started, .seconds(2), "the connect was cancelled, not waited out")
            XCTAssertTrue(eventually { server.statistics.connectsCancelled == 1 && server.statistics.outboundActive == 0 })
        }
        // A stop while connects wait: each throws cancelled, and serve returns.
        let server = AsyncServer(configuration: connectingConfig(.pooled, .bufferRing, threads: 2))
        let serving = Task { try await server.serve { _ in } }
        _ = try await server.listeningAddress
        let waiting = (0..<4).map { _ in
            Task { () -> ConnectFailure? in
                do {
                    try await server.withConnection(to: address, timeout: .seconds(30)) { _ in }
                    return nil
                } catch {
                    return error as? ConnectFailure
                }
            }
        }
        XCTAssertTrue(eventually { server.statistics.outboundActive == 4 })
        let started = ContinuousClock.now
        server.stop()
        try await serving.value
        for task in waiting {
            let failure = await task.value
            XCTAssertEqual(failure, .cancelled)
        }
        XCTAssertLessThan(ContinuousClock.now - started, .seconds(5))
    }

    func testAThrowingBodyAbortsItsConnectionOnly() async throws {
        struct Oops: Error {}
        try await withEchoUpstream { upstream in
            try await withConnectingServer(connectingConfig(.pooled, .bufferRing), body: { _, _ in }) { server, _ in
                do {
                    try await server.withConnection(to: upstream) { backend in
                        try await backend.outbound.write("lost")
                        throw Oops()
                    }
                    XCTFail("the body's error was not thrown")
                } catch is Oops {}
                let answer = try await server.withConnection(to: upstream) { backend in
                    try await backend.outbound.write("kept")
                    await backend.outbound.finish()
                    var got: [UInt8] = []
                    for await chunk in backend.inbound { got += chunk.bytes }
                    return String(decoding: got, as: UTF8.self)
                }
                XCTAssertEqual(answer, "kept")
                XCTAssertTrue(eventually { server.statistics.outboundActive == 0 && server.statistics.connects == 2 })
            }
        }
    }

    // MARK: Order, and chunks after the body

    /// Keeps what each connection sends, by arrival.
    struct Recorder: ConnectionHandler {
        let got: Locked<[UInt8]>
        mutating func received(_ bytes: UnsafeMutableRawBufferPointer, connection: Connection) -> Reply {
            got.with { $0 += Array(bytes) }
            return .nothing
        }
    }

    /// A write through the backend's handle, then the end of `withConnection`'s body: the close
    /// comes after the write (it used to overtake it).
    func testAHandleWriteThenTheEndOfWithConnectionsBodySendsTheWrite() async throws {
        let got = Locked<[UInt8]>([])
        var u = config(.pooled, .bufferRing)
        u.maxConnections = 16
        let upstream = Server(configuration: u) { Recorder(got: got) }
        try upstream.start()
        defer {
            upstream.stop()
            upstream.wait()
        }
        let address = try XCTUnwrap(upstream.boundAddress)
        for (mode, receive) in Self.variants {
            got.with { $0 = [] }
            try await withConnectingServer(connectingConfig(mode, receive), body: { server, client in
                try await server.withConnection(to: address) { backend in
                    _ = await backend.handle.write("bye\n")
                }
                try await client.outbound.write("ok")
            }) { server, port in
                let s = try TestSocket.connect(port: port)
                defer { s.close() }
                s.setTimeout(seconds: 5)
                XCTAssertEqual(try s.readToEnd(), Array("ok".utf8))
                XCTAssertTrue(eventually { got.get == Array("bye\n".utf8) }, "\(mode)/\(receive): \(got.get)")
            }
        }
    }

    /// A chunk taken inside `withConnection`'s body and returned from it is no longer valid once
    /// the body has returned: its buffer went back with the connection (it used to stay valid, its
    /// bytes another connection's by then).
    func testAChunkReturnedFromWithConnectionsBodyIsNoLongerValid() async throws {
        try await withEchoUpstream { upstream in
            let outcome = Locked<String>("")
            try await withConnectingServer(connectingConfig(.pooled, .bufferRing), body: { server, client in
                let chunk = try await server.withConnection(to: upstream) { backend -> InboundChunk? in
                    try await backend.outbound.write("x")
                    var input = backend.inbound.makeAsyncIterator()
                    return await input.next()
                }
                outcome.with { $0 = "\(chunk?.isValid ?? true) \(chunk?.count ?? -1)" }
                try await client.outbound.write("ok")
            }) { server, port in
                let s = try TestSocket.connect(port: port)
                defer { s.close() }
                s.setTimeout(seconds: 5)
                XCTAssertEqual(try s.readToEnd(), Array("ok".utf8))
                XCTAssertEqual(outcome.get, "false 0")
            }
        }
    }
}
