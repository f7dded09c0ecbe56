import EchoServer
import Foundation
import Glibc
import SocketPool
import TestSupport
import URing
import XCTest

/// A client that sends and never reads, with a small receive buffer so that what the server sends
/// it backs up in the server quickly.
func nonReadingClient(port: UInt16) throws -> TestSocket {
    let s = try TestSocket.unconnected()
    try Sockets.setOption(s.fd, SOL_SOCKET, SO_RCVBUF, 4096)
    try s.connect(port: port)
    return s
}

/// Writes every received chunk to every other connection of the ring (a chat's broadcast), and
/// aborts a connection a write to which is refused, remembering it.
struct Broadcaster: ConnectionHandler {
    let refused: Locked<[ConnectionID]>
    var members: [ConnectionID] = []

    mutating func opened(_ connection: Connection) { members.append(connection.id) }
    mutating func closed(_ connection: ConnectionID) { members.removeAll { $0 == connection } }
    mutating func received(_ bytes: UnsafeMutableRawBufferPointer, connection: Connection) -> Reply {
        for member in members where member != connection.id {
            if connection.ring.write(UnsafeRawBufferPointer(bytes), to: member) == .full {
                refused.with { $0.append(member) }
                connection.ring.abort(member)
            }
        }
        return .nothing
    }
}

/// Outbound buffers are shared fairly: every connection keeps a guaranteed minimum, and one that
/// does not drain cannot take more than its share of the rest.
final class OutboundShareTests: ServerTestCase {
    /// Clients that never read, through the proxy in front of an echo upstream: each pins its
    /// pair's outbound buffers. Another pair must still be answered, and the attackers are the ones
    /// closed once their output has stalled.
    func testClientsThatNeverReadDoNotFreezeTheOtherPairsOfAProxy() throws {
        var c = config(.pooled, .bufferRing)
        c.maxConnections = 64
        c.maxOutboundConnections = 64
        let upstream = Server(configuration: { () -> ServerConfiguration in
            var u = config(.pooled, .bufferRing)
            u.threads = 2
            u.maxConnections = 128
            return u
        }())
        try upstream.start()
        defer {
            upstream.stop()
            upstream.wait()
        }
        let address = try XCTUnwrap(upstream.boundAddress)
        try withServer(c, handler: { TCPProxy(upstream: address, connectTimeout: .seconds(2)) }) { proxy, port in
            let flood = patternBytes(seed: 3, count: 16 << 20)
            var attackers: [(TestSocket, SocketWriter)] = []
            defer {
                for (s, w) in attackers {
                    w.stop()
                    s.reset()
                }
            }
            for _ in 0..<24 {
                let s = try nonReadingClient(port: port)
                attackers.append((s, SocketWriter(s, flood)))
            }
            // Until the attackers' pairs hold what they can.
            var last = -1
            _ = eventually(.seconds(10)) {
                usleep(300_000)
                let now = proxy.statistics.outboundBuffersInUse
                defer { last = now }
                return now == last
            }
            for i in 0..<3 {
                let victim = try TestSocket.connect(port: port)
                defer { victim.close() }
                victim.setTimeout(seconds: 10)
                let ping = Array("ping \(i)\n".utf8)
                try victim.writeAll(ping)
                XCTAssertEqual(try? victim.readExactly(ping.count), ping, "another pair is answered beside 24 that never read")
            }
        }
    }

    /// A broadcast to 40 clients that never read and one that does: the reader is never refused
    /// (it drains), whatever the others hold.
    func testAReaderIsNeverRefusedWhileOthersThatNeverReadHoldTheirShare() throws {
        var c = config(.pooled, .bufferRing)
        c.maxConnections = 64
        let refused = Locked<[ConnectionID]>([])
        try withServer(c, handler: { Broadcaster(refused: refused) }) { server, port in
            var idle: [TestSocket] = []
            defer { for s in idle { s.reset() } }
            for _ in 0..<40 { idle.append(try nonReadingClient(port: port)) }
            let reader = try TestSocket.connect(port: port)
            defer { reader.close() }
            reader.setTimeout(seconds: 20)
            XCTAssertTrue(eventually { server.statistics.active == 41 })
            let sender = try TestSocket.connect(port: port)
            defer { sender.close() }
            XCTAssertTrue(eventually { server.statistics.active == 42 })
            let total = 24 << 20
            let bytes = patternBytes(seed: 9, count: total)
            let writer = SocketWriter(sender, bytes)
            defer { writer.stop() }
            // Aborted, the reader would read an end of stream here.
            let got = try reader.readExactly(total)
            XCTAssertTrue(got == bytes, "the reader got every byte, in order")
            writer.wait()
            XCTAssertEqual(Set(refused.get).count, 40, "the 40 that never read were refused (each once, then aborted)")
            XCTAssertTrue(eventually { server.statistics.active == 2 })
        }
    }
}
