import EchoServer
import Foundation
import Glibc
import SocketPool
import TestSupport
import URing
import XCTest

/// ``TCPProxy`` on real rings, in front of a real io_uring server.
final class ProxyTests: ServerTestCase {
    /// A proxy configuration: room for `pairs` proxied connections.
    func proxyConfig(_ mode: PoolMode, _ receive: ReceiveStrategy, pairs: Int = 64) -> ServerConfiguration {
        var c = config(mode, receive)
        c.maxConnections = pairs
        c.maxOutboundConnections = pairs
        return c
    }

    /// Runs `body` with an upstream server (`handler`'s) and a proxy in front of it; the proxy is
    /// checked for leaks when it stops (``withServer(_:handler:metrics:metricsFactory:faults:file:line:_:)``).
    func withProxy<H: ConnectionHandler>(
        _ configuration: ServerConfiguration, upstream handler: @escaping @Sendable () -> H,
        file: StaticString = #filePath, line: UInt = #line,
        _ body: (Server<TCPProxy>, UInt16, Server<H>) throws -> Void
    ) throws {
        var upstreamConfig = config(.pooled, .bufferRing)
        upstreamConfig.maxConnections = max(configuration.maxConnections, 64)
        let upstream = Server(configuration: upstreamConfig, makeHandler: handler)
        try upstream.start()
        defer {
            upstream.stop()
            upstream.wait()
        }
        let address = try XCTUnwrap(upstream.boundAddress)
        try withServer(configuration, handler: { TCPProxy(upstream: address, connectTimeout: .seconds(2)) }, file: file, line: line) {
            proxy, port in try body(proxy, port, upstream)
        }
    }

    func testBytesGoBothWaysByteExactAtOnce() throws {
        for (mode, receive) in Self.variants {
            try withProxy(proxyConfig(mode, receive), upstream: { EchoHandler() }) { proxy, port, _ in
                let s = try TestSocket.connect(port: port)
                defer { s.close() }
                s.setTimeout(seconds: 30)
                let total = mode == .pooled && receive == .bufferRing ? 100 << 20 : 16 << 20
                let bytes = patternBytes(seed: 11, count: total)
                let writer = SocketWriter(s, bytes)
                defer { writer.stop() }
                let back = try s.readExactly(total)
                XCTAssertTrue(back == bytes, "\(mode)/\(receive): \(total) bytes through the proxy and back, in order")
                XCTAssertTrue(eventually { proxy.statistics.connects == 1 })
            }
        }
    }

    func testAClientsFINBecomesTheUpstreamsAndTheEchoStillComesBack() throws {
        for (mode, receive) in Self.variants {
            try withProxy(proxyConfig(mode, receive), upstream: { EchoHandler() }) { proxy, port, upstream in
                let s = try TestSocket.connect(port: port)
                defer { s.close() }
                s.setTimeout(seconds: 10)
                let bytes = patternBytes(seed: 4, count: 300_000)
                try s.writeAll(bytes)
                s.shutdownWrite()
                XCTAssertTrue(try s.readToEnd() == bytes, "\(mode)/\(receive): everything, then EOF")
                XCTAssertTrue(eventually { proxy.statistics.active == 0 && proxy.statistics.outboundActive == 0 })
                XCTAssertTrue(eventually { upstream.statistics.active == 0 })
            }
        }
    }

    func testAnUpstreamsFINBecomesTheClientsAndTheClientMayGoOnSending() throws {
        for (mode, receive) in Self.variants {
            let counts = Locked<[Int]>([])
            let refused = Locked(0)
            try withProxy(proxyConfig(mode, receive), upstream: { ShutdownFirst(counts: counts, refused: refused) }) {
                proxy, port, upstream in
                let s = try TestSocket.connect(port: port)
                defer { s.close() }
                s.setTimeout(seconds: 10)
                try s.writeAll(Array("bye".utf8))
                XCTAssertEqual(try s.readToEnd(), Array("ok".utf8), "\(mode)/\(receive): ok, then the upstream's FIN")
                let more = patternBytes(seed: 5, count: 200_000)
                try s.writeAll(more)
                s.shutdownWrite()
                XCTAssertTrue(eventually { counts.get == [200_000] }, "\(mode)/\(receive): \(counts.get)")
                XCTAssertTrue(eventually { proxy.statistics.active == 0 && proxy.statistics.outboundActive == 0 })
            }
        }
    }

    /// A client that sends and never reads: the proxy holds a bounded amount for it (its pair's
    /// buffers and output bound), and another pair beside it is served as usual.
    func testAClientThatNeverReadsHoldsBoundedMemoryAndSlowsOnlyItsPair() throws {
        var c = proxyConfig(.pooled, .bufferRing)
        c.maxBuffersPerConnection = 16
        try withProxy(c, upstream: { EchoHandler() }) { proxy, port, _ in
            let stalled = try TestSocket.connect(port: port)
            let bytes = patternBytes(seed: 6, count: 64 << 20)
            let writer = SocketWriter(stalled, bytes)  // blocks once everything is full
            defer {
                writer.stop()
                stalled.reset()
            }
            usleep(500_000)
            let s = proxy.statistics
            XCTAssertLessThanOrEqual(s.buffersHeld, 2 * 16 + 4, "held receive buffers stay within two shares")
            let outboundBound = 2 * ((1 << 20) / c.bufferSize + 2)
            XCTAssertLessThanOrEqual(s.outboundBuffersInUse, outboundBound, "outbound buffers within two output bounds")
            // Another pair goes on.
            let other = patternBytes(seed: 7, count: 100_000)
            XCTAssertTrue(try Self.roundTrip(port: port, other) == other)
        }
    }

    /// An upstream that never reads: the proxy holds a bounded amount for the pair (the upstream
    /// side's output bound, the client side's buffer share), and the client's sending stalls.
    func testAnUpstreamThatNeverReadsHoldsBoundedMemory() throws {
        struct NeverReads: ConnectionHandler {
            let opened: Locked<[ConnectionHandle]>
            mutating func opened(_ connection: Connection) {
                connection.ring.pauseReceiving(connection.id)
                opened.with { $0.append(connection.handle) }
            }
            mutating func received(_ bytes: UnsafeMutableRawBufferPointer, connection: Connection) -> Reply { .nothing }
        }
        var c = proxyConfig(.pooled, .bufferRing)
        c.maxBuffersPerConnection = 16
        let upstreamConnections = Locked<[ConnectionHandle]>([])
        try withProxy(c, upstream: { NeverReads(opened: upstreamConnections) }) { proxy, port, upstream in
            let s = try TestSocket.connect(port: port)
            let writer = SocketWriter(s, patternBytes(seed: 8, count: 64 << 20))
            defer {
                writer.stop()
                s.reset()
                // The upstream never reads, so it never sees the proxy's side end: its connection is
                // aborted before the proxy's descriptors are counted (on epoll it is a descriptor).
                upstreamConnections.get.forEach { $0.abort() }
                XCTAssertTrue(eventually { upstream.statistics.active == 0 })
            }
            usleep(500_000)
            let stats = proxy.statistics
            XCTAssertLessThanOrEqual(stats.buffersHeld, 16 + 4, "the client side holds at most its share")
            XCTAssertLessThanOrEqual(stats.outboundBuffersInUse, (1 << 20) / c.bufferSize + 2, "one output bound")
            XCTAssertLessThan(stats.bytesIn, 8 << 20, "the client's sending stalled")
        }
    }

    func testAThousandPairsAtOnce() throws {
        let c = proxyConfig(.pooled, .bufferRing, pairs: 1100)
        try withProxy(c, upstream: { EchoHandler() }) { proxy, port, _ in
            var clients: [TestSocket] = []
            defer { for s in clients { s.close() } }
            for _ in 0..<1000 {
                let s = try TestSocket.connect(port: port)
                s.setTimeout(seconds: 10)
                clients.append(s)
            }
            for (i, s) in clients.enumerated() {
                try s.writeAll(patternBytes(seed: UInt64(i), count: 256))
            }
            for (i, s) in clients.enumerated() {
                XCTAssertTrue(try s.readExactly(256) == patternBytes(seed: UInt64(i), count: 256), "pair \(i)")
            }
            XCTAssertTrue(eventually { proxy.statistics.active == 1000 && proxy.statistics.outboundActive == 1000 })
        }
    }

    func testChurnThroughTheProxyLeavesNothing() throws {
        for (mode, receive) in Self.variants {
            try withProxy(proxyConfig(mode, receive), upstream: { EchoHandler() }) { proxy, port, _ in
                let ok = Locked(0)
                parallel(4) { t in
                    for i in 0..<100 {
                        let b = patternBytes(seed: UInt64(t * 1000 + i), count: 200)
                        if (try? Self.roundTrip(port: port, b)) == b { ok.with { $0 += 1 } }
                    }
                }
                XCTAssertEqual(ok.get, 400, "\(mode)/\(receive)")
                XCTAssertTrue(eventually { proxy.statistics.outboundClosed == 400 && proxy.statistics.outboundActive == 0 })
            }
        }
    }

    func testStopWithPairsOpenClosesThemAll() throws {
        try withProxy(proxyConfig(.pooled, .bufferRing), upstream: { EchoHandler() }) { proxy, port, upstream in
            var clients: [TestSocket] = []
            for i in 0..<50 {
                let s = try TestSocket.connect(port: port)
                s.setTimeout(seconds: 5)
                try s.writeAll([UInt8(i)])
                XCTAssertEqual(try s.readExactly(1), [UInt8(i)])
                clients.append(s)
            }
            proxy.stop()  // with 50 pairs open
            proxy.wait()
            for s in clients {
                XCTAssertEqual(try? s.readToEnd(), [], "closed by the proxy's stop")
                s.close()
            }
            XCTAssertTrue(eventually { upstream.statistics.active == 0 }, "the upstream sides were closed too")
        }  // and it left nothing (withServer checks)
    }

    /// A proxy served as another listener of a server whose own handler is an echo: the
    /// outbound connections it opens are its own (they went to the main handler, which echoed the
    /// upstream's bytes back to it, and the proxy never heard its connection open).
    func testAProxyOnAnotherListenerGetsItsOwnOutboundConnections() throws {
        var upstreamConfig = config(.pooled, .bufferRing)
        upstreamConfig.maxConnections = 16
        let upstream = Server(configuration: upstreamConfig)
        try upstream.start()
        defer {
            upstream.stop()
            upstream.wait()
        }
        let upstreamAddress = try XCTUnwrap(upstream.boundAddress)
        for (mode, receive) in [(PoolMode.pooled, ReceiveStrategy.bufferRing), (PoolMode.unpooled, ReceiveStrategy.perSessionBuffer)] {
            var c = proxyConfig(mode, receive)
            c.threads = 1
            let side = Listener(name: "proxy", host: "127.0.0.1", port: 0) {
                TCPProxy(upstream: upstreamAddress, connectTimeout: .seconds(2))
            }
            let server = Server(configuration: c, listeners: [side]) { EchoHandler() }
            try server.start()
            defer {
                server.stop()
                server.wait()
            }
            let proxyPort = try XCTUnwrap(server.address(ofListener: "proxy")).port
            let bytes = patternBytes(seed: 5, count: 200_000)
            let s = try TestSocket.connect(port: proxyPort)
            defer { s.close() }
            s.setTimeout(seconds: 5)
            let writer = SocketWriter(s, bytes)
            defer { writer.stop() }
            let back = try s.readExactly(bytes.count)
            XCTAssertTrue(back == bytes, "\(mode)/\(receive): through the side listener's proxy and back")
            XCTAssertTrue(eventually { server.statistics.connects == 1 }, "\(mode)")
        }
    }

    func testAnUpstreamThatRefusesClosesTheClientAtOnce() throws {
        let closedPort = try ConnectTests.portNobodyListensOn()
        let c = proxyConfig(.pooled, .bufferRing)
        try withServer(c, handler: { TCPProxy(upstream: SocketAddress(host: "127.0.0.1", port: closedPort)!) }) {
            proxy, port in
            let s = try TestSocket.connect(port: port)
            defer { s.close() }
            s.setTimeout(seconds: 2)
            let started = ContinuousClock.now
            XCTAssertEqual(try s.readToEnd(), [], "closed")
            XCTAssertLessThan(ContinuousClock.now - started, .seconds(1))
            XCTAssertTrue(eventually { proxy.statistics.connectsRefused == 1 })
        }
    }

    // MARK: Latency, resets

    /// Answers once two bytes have come (a request written in two parts).
    struct AnswerEveryTwoBytes: ConnectionHandler {
        var got: [Int] = []
        mutating func start(capacity: Int) { got = Array(repeating: 0, count: capacity) }
        mutating func opened(_ connection: Connection) { got[connection.index] = 0 }
        mutating func received(_ bytes: UnsafeMutableRawBufferPointer, connection: Connection) -> Reply {
            got[connection.index] += bytes.count
            while got[connection.index] >= 2 {
                got[connection.index] -= 2
                connection.write("!")
            }
            return .nothing
        }
    }

    /// A request written in two parts 1 ms apart is answered without waiting for the upstream's
    /// delayed ACK: the proxy's outbound sockets do not delay small segments (TCP_NODELAY; the
    /// second part used to wait about 40 ms behind the first's ACK, Nagle's algorithm).
    func testARequestInTwoPartsIsRelayedWithoutWaitingForADelayedACK() throws {
        for (mode, receive) in Self.variants {
            try withProxy(proxyConfig(mode, receive), upstream: { AnswerEveryTwoBytes() }) { proxy, port, _ in
                let s = try TestSocket.connect(port: port)
                defer { s.close() }
                s.setTimeout(seconds: 5)
                var slow = 0
                for _ in 0..<20 {
                    let started = ContinuousClock.now
                    try s.writeAll(Array("a".utf8))
                    usleep(1_000)
                    try s.writeAll(Array("b".utf8))
                    XCTAssertEqual(try s.readExactly(1), Array("!".utf8))
                    if ContinuousClock.now - started >= .milliseconds(35) { slow += 1 }
                }
                XCTAssertLessThan(slow, 10, "\(mode)/\(receive): \(slow) of 20 exchanges waited for a delayed ACK")
                let release = Sockets.kernelRelease.split(separator: ".").prefix(2).compactMap { Int($0.prefix { $0.isNumber }) }
                if mode == .pooled && testDriver == .ioUring && release.count == 2 && (release[0], release[1]) >= (6, 7) {
                    // The option was set by the ring on the slot, not by falling back to a descriptor.
                    XCTAssertTrue(proxy.statistics.features.isSuperset(of: [.directSocket, .socketCommands]), "\(proxy.statistics.features)")
                }
            }
        }
    }

    /// Resets as soon as it has received something.
    struct ResetsOnData: ConnectionHandler {
        mutating func received(_ bytes: UnsafeMutableRawBufferPointer, connection: Connection) -> Reply {
            connection.abort()
            return .nothing
        }
    }

    /// An upstream that resets reaches the client as a reset, not as a clean end of stream that
    /// would pass for a complete answer.
    func testAnUpstreamResetReachesTheClientAsAReset() throws {
        for (mode, receive) in Self.variants {
            try withProxy(proxyConfig(mode, receive), upstream: { ResetsOnData() }) { proxy, port, _ in
                let s = try TestSocket.connect(port: port)
                defer { s.close() }
                s.setTimeout(seconds: 5)
                try s.writeAll(Array("hello".utf8))
                XCTAssertThrowsError(try s.readSome(), "\(mode)/\(receive): a reset, not an end of stream") { error in
                    XCTAssertEqual((error as? URingError)?.errno, .connectionReset, "\(mode)/\(receive): \(error)")
                }
            }
        }
    }

    // MARK: TIME_WAIT

    /// TCP sockets of this machine in TIME_WAIT whose remote port is `port` (IPv4, /proc/net/tcp).
    static func timeWaits(remotePort port: UInt16) throws -> Int {
        let lines = try readFile("/proc/net/tcp").split(separator: "\n").dropFirst()
        return lines.filter { line in
            let fields = line.split(separator: " ")
            guard fields.count > 3, fields[3] == "06", let colon = fields[2].lastIndex(of: ":") else { return false }
            return UInt16(fields[2][fields[2].index(after: colon)...], radix: 16) == port
        }.count
    }

    /// The client ends first (after reading its answer): with the default half-close the proxy
    /// passes the FIN on and its upstream socket keeps a TIME_WAIT per connection; with
    /// ``TCPProxy/UpstreamEnding/reset`` the upstream connection is reset and none is kept.
    func testWhenTheClientEndsFirstTheProxyKeepsATimeWaitUnlessItResetsTheUpstream() throws {
        let rounds = 200
        for ending in [TCPProxy.UpstreamEnding.halfClose, .reset] {
            var u = config(.pooled, .bufferRing)
            u.maxConnections = 64
            // An upstream on a port no earlier socket of this machine has TIME_WAITs toward (port
            // 0 can hand out a port an earlier test's upstream had: its TIME_WAITs would count).
            var upstream = Server(configuration: u)
            try upstream.start()
            for _ in 0..<20 where try Self.timeWaits(remotePort: try XCTUnwrap(upstream.boundAddress).port) > 0 {
                upstream.stop()
                upstream.wait()
                upstream = Server(configuration: u)
                try upstream.start()
            }
            defer {
                upstream.stop()
                upstream.wait()
            }
            let address = try XCTUnwrap(upstream.boundAddress)
            XCTAssertEqual(try Self.timeWaits(remotePort: address.port), 0, "\(ending): a port with no TIME_WAIT toward it")
            try withServer(proxyConfig(.pooled, .bufferRing), handler: { TCPProxy(upstream: address, upstreamEnding: ending) }) {
                proxy, port in
                for i in 0..<rounds {
                    let s = try TestSocket.connect(port: port)
                    defer { s.close() }
                    s.setTimeout(seconds: 5)
                    let bytes = patternBytes(seed: UInt64(i), count: 100)
                    try s.writeAll(bytes)
                    XCTAssertEqual(try s.readExactly(100), bytes, "\(ending) \(i)")
                    s.shutdownWrite()  // done: the client ends first
                    XCTAssertEqual(try s.readToEnd(), [], "\(ending) \(i): then a clean end")
                }
                XCTAssertTrue(eventually { proxy.statistics.outboundClosed == UInt64(rounds) && proxy.statistics.active == 0 })
                let kept = try Self.timeWaits(remotePort: address.port)
                switch ending {
                case .halfClose: XCTAssertGreaterThanOrEqual(kept, rounds - 5, "the proxy passed the FIN on: TIME_WAITs are its")
                case .reset: XCTAssertEqual(kept, 0, "reset: no TIME_WAIT toward the upstream")
                }
            }
        }
    }
}
