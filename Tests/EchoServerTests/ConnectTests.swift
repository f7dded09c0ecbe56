import EchoServer
import Foundation
import Glibc
import SocketPool
import TestSupport
import URing
import XCTest

/// Opens an outbound connection when told to (a ring message: the port in two bytes, then 1 to
/// write before the connect completes, the timeout in ms as the value; or a third byte 2: close
/// them all), says hello on it, and records what happens.
struct Connector: ConnectionHandler {
    let events: Locked<[String]>
    let received: Locked<[UInt8]>
    let ids: Locked<[ConnectionID]>

    mutating func received(message: RingMessage, ring: RingContext) {
        let bytes = Array(message.bytes)
        if bytes[2] == 2 {  // close every outbound connection
            for id in ids.get { ring.close(id) }
            return
        }
        let port = UInt16(bytes[0]) << 8 | UInt16(bytes[1])
        switch ring.connect(to: SocketAddress(host: "127.0.0.1", port: port)!, timeout: .milliseconds(Int(message.value))) {
        case .success(let id):
            ids.with { $0.append(id) }
            if bytes[2] == 1 { XCTAssertEqual(Array("early ".utf8).withUnsafeBytes { ring.write($0, to: id) }, .queued) }
        case .failure(let failure):
            events.with { $0.append("at once: \(failure)") }
        }
    }
    mutating func opened(_ connection: Connection) {
        guard connection.isOutbound else { return }
        XCTAssertEqual(connection.listener, -1)
        events.with { $0.append("opened") }
        connection.write("hello")
    }
    mutating func received(_ bytes: UnsafeMutableRawBufferPointer, connection: Connection) -> Reply {
        if connection.isOutbound { received.with { $0 += Array(bytes) } }
        return .nothing
    }
    mutating func connectFailed(_ connection: ConnectionID, _ failure: ConnectFailure, ring: RingContext) {
        events.with { $0.append("failed: \(failure)") }
    }
    mutating func closed(_ connection: ConnectionID) {
        if ids.get.contains(connection) { events.with { $0.append("closed") } }
    }
}

/// Outbound connections on real rings: connected, refused, timed out, capped, cancelled by a stop.
final class ConnectTests: ServerTestCase {
    /// The outbound variants: pooled with sockets made into slots, pooled with plain sockets,
    /// unpooled.
    var outboundVariants: [(String, ServerConfiguration)] {
        var direct = config(.pooled, .bufferRing)
        direct.maxOutboundConnections = 4
        var plain = direct
        plain.features.remove(.directSocket)
        var unpooled = config(.unpooled, .perSessionBuffer)
        unpooled.maxOutboundConnections = 4
        // (On epoll every socket is a plain one: the direct variant is io_uring's.)
        let all = [("pooled/direct", direct), ("pooled/plain", plain), ("unpooled", unpooled)]
        return testDriver == .ioUring ? all : all.filter { $0.0 != "pooled/direct" }
    }

    /// Tells ring 0 of `server` to connect to `port`.
    func connect<H>(_ server: Server<H>, to port: UInt16, timeoutMs: UInt64 = 2000, early: Bool = false) throws {
        let ring = try XCTUnwrap(server.ring(0))
        XCTAssertEqual(ring.post([UInt8(port >> 8), UInt8(port & 0xFF), early ? 1 : 0], value: timeoutMs), .posted)
    }

    func testAnOutboundConnectionOpensLikeAnAcceptedOneAndWritesBeforeItConnectedGoOut() throws {
        let upstream = Server(configuration: config(.pooled, .bufferRing))  // an echo server to connect to
        try upstream.start()
        defer {
            upstream.stop()
            upstream.wait()
        }
        let upstreamPort = try XCTUnwrap(upstream.boundAddress).port
        for (label, c) in outboundVariants {
            let events = Locked<[String]>([])
            let received = Locked<[UInt8]>([])
            let ids = Locked<[ConnectionID]>([])
            try withServer(c, handler: { Connector(events: events, received: received, ids: ids) }) { server, _ in
                if label == "pooled/direct" {
                    try XCTSkipUnless(server.statistics.features.contains(.directSocket), "no IORING_OP_SOCKET")
                }
                try connect(server, to: upstreamPort, early: true)
                XCTAssertTrue(eventually { received.get.count == 11 }, "\(label): \(events.get)")
                XCTAssertEqual(String(decoding: received.get, as: UTF8.self), "early hello", label)
                XCTAssertEqual(events.get, ["opened"], label)
                XCTAssertTrue(eventually { server.statistics.connects == 1 && server.statistics.outboundActive == 1 }, label)
                XCTAssertEqual(server.statistics.active, 0, "\(label): outbound connections are not in active")
                // Closed from our side: the handler hears closed, as for an accepted one.
                XCTAssertEqual(server.ring(0)!.post([0, 0, 2], value: 0), .posted)
                XCTAssertTrue(eventually { events.get == ["opened", "closed"] }, "\(label): \(events.get)")
                XCTAssertTrue(eventually { server.statistics.outboundClosed == 1 && server.statistics.outboundActive == 0 })
            }
        }
    }

    func testARefusedConnectIsReportedAsRefused() throws {
        let closedPort = try Self.portNobodyListensOn()
        for (label, c) in outboundVariants {
            let events = Locked<[String]>([])
            try withServer(c, handler: { Connector(events: events, received: Locked([]), ids: Locked([])) }) { server, _ in
                try connect(server, to: closedPort)
                XCTAssertTrue(eventually { events.get == ["failed: refused"] }, "\(label): \(events.get)")
                XCTAssertTrue(eventually { server.statistics.connectsRefused == 1 && server.statistics.outboundActive == 0 })
            }
        }
    }

    func testAConnectToAListenerThatStopsAnsweringTimesOut() throws {
        // A listener with a backlog of 0 whose queue is full: loopback drops further SYNs.
        let (listener, port) = try Self.fullListener()
        defer {
            for fd in listener { close(fd) }
        }
        for (label, c) in outboundVariants {
            let events = Locked<[String]>([])
            try withServer(c, handler: { Connector(events: events, received: Locked([]), ids: Locked([])) }) { server, _ in
                let started = ContinuousClock.now
                try connect(server, to: port, timeoutMs: 300)
                XCTAssertTrue(eventually { events.get == ["failed: timed out"] }, "\(label): \(events.get)")
                XCTAssertLessThan(ContinuousClock.now - started, .seconds(3), label)
                XCTAssertTrue(eventually { server.statistics.connectsTimedOut == 1 }, label)
            }
        }
    }

    func testConnectsOverTheOutboundCapAreRefusedAtOnce() throws {
        let (listener, port) = try Self.fullListener()
        defer {
            for fd in listener { close(fd) }
        }
        var c = config(.pooled, .bufferRing)
        c.maxOutboundConnections = 2
        let events = Locked<[String]>([])
        try withServer(c, handler: { Connector(events: events, received: Locked([]), ids: Locked([])) }) { server, _ in
            for _ in 0..<3 { try connect(server, to: port, timeoutMs: 300) }
            XCTAssertTrue(eventually { events.get.filter { $0 == "failed: timed out" }.count == 2 }, "\(events.get)")
            XCTAssertEqual(events.get.filter { $0 == "at once: cap reached" }.count, 1, "\(events.get)")
            XCTAssertTrue(eventually { server.statistics.connectsCapped == 1 })
        }
    }

    func testAStopCancelsConnectsInFlight() throws {
        let (listener, port) = try Self.fullListener()
        defer {
            for fd in listener { close(fd) }
        }
        for (label, c) in outboundVariants {
            let events = Locked<[String]>([])
            let started = ContinuousClock.now
            try withServer(c, handler: { Connector(events: events, received: Locked([]), ids: Locked([])) }) { server, _ in
                try connect(server, to: port, timeoutMs: 30_000)
                try connect(server, to: port, timeoutMs: 30_000)
                XCTAssertTrue(eventually { server.statistics.outboundActive == 2 })
            }  // stops the server
            XCTAssertLessThan(ContinuousClock.now - started, .seconds(5), "\(label): the stop did not wait for the connects")
            XCTAssertEqual(events.get, ["failed: cancelled", "failed: cancelled"], label)
        }
    }

    // MARK: Helpers

    /// A port with nothing listening on it (bound, then closed).
    static func portNobodyListensOn() throws -> UInt16 {
        let fd = try Sockets.listen(on: SocketAddress(host: "127.0.0.1", port: 0)!)
        let port = try Sockets.localAddress(fd).port
        close(fd)
        return port
    }

    /// A listener with a backlog of 0 and its accept queue full, so it answers no more SYNs; its
    /// descriptors (the listener and the queued clients).
    static func fullListener() throws -> ([Int32], UInt16) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        _ = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        listen(fd, 0)
        let port = try Sockets.localAddress(fd).port
        var fds = [fd]
        for _ in 0..<3 {
            let client = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
            var to = address
            to.sin_port = port.bigEndian
            _ = withUnsafePointer(to: &to) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(client, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            fds.append(client)
        }
        usleep(100_000)
        return (fds, port)
    }
}
