import EchoServer
import Foundation
import Glibc
import SocketPool
import Synchronization
import TestSupport
import URing
import XCTest

/// Writes through its own handle as a connection opens, then closes (or shuts the output of) the
/// connection through the same handle: on the ring's own thread, the two must keep their order.
struct WriteThenCloseThroughTheHandle: ConnectionHandler {
    let shutdown: Bool
    mutating func opened(_ connection: Connection) {
        let handle = connection.handle
        XCTAssertEqual(handle.tryWrite("hi\n"), .queued)
        if shutdown { handle.shutdownOutput() } else { handle.close() }
    }
    mutating func received(_ bytes: UnsafeMutableRawBufferPointer, connection: Connection) -> Reply { .nothing }
}

/// Echoes each byte in place and writes a 5,000-byte block through its own handle in the same
/// call: the block goes after the echo, whole, as a `Connection.write` would (a handle write that
/// filled the room of the queue's last buffer put the echo inside the block).
struct EchoThenBlockThroughTheHandle: ConnectionHandler {
    static let block = [UInt8](repeating: 0x78, count: 5000)
    mutating func received(_ bytes: UnsafeMutableRawBufferPointer, connection: Connection) -> Reply {
        // A refused write shows as a block missing from the output (no assertion here, on the
        // ring's thread: XCTest's machinery would open descriptors of its own there).
        for _ in 0..<bytes.count { _ = connection.handle.tryWrite(Self.block) }
        return .send(bytes.count)
    }
}

/// Sends 1 KiB every 100 ms for 3 s once a connection has said something, through its handle from a
/// thread of its own, then closes it: a download that only ever sends.
struct Dripper: ConnectionHandler {
    static let drops = 30
    static let dropSize = 1024
    mutating func received(_ bytes: UnsafeMutableRawBufferPointer, connection: Connection) -> Reply {
        let handle = connection.handle
        Thread {
            let drop = [UInt8](repeating: 0x61, count: Self.dropSize)
            for _ in 0..<Self.drops {
                guard handle.tryWrite(drop) == .queued else { return }
                usleep(100_000)
            }
            handle.close()
        }.start()
        return .nothing
    }
    mutating func inputEnded(_ connection: Connection) {}
}

/// The order of writes and closes whichever path carries them, idle and stall timeouts that count
/// progress both ways, and waits that end on cancellation.
final class OrderAndCancellationTests: ServerTestCase {
    // MARK: Order

    func testAHandlesWriteThenItsCloseOnTheRingsThreadSendsTheWriteFirst() throws {
        for (mode, receive) in Self.variants {
            for shutdown in [false, true] {
                try withServer(config(mode, receive), handler: { WriteThenCloseThroughTheHandle(shutdown: shutdown) }) { _, port in
                    let s = try TestSocket.connect(port: port)
                    defer { s.close() }
                    s.setTimeout(seconds: 5)
                    XCTAssertEqual(try s.readToEnd(), Array("hi\n".utf8), "\(mode)/\(receive) shutdown \(shutdown)")
                }
            }
        }
    }

    /// With output backed up (the client reads only at the end), each echoed byte comes before
    /// the block the same call wrote through the handle, never inside one.
    func testAHandleWriteDuringReceivedGoesAfterTheInPlaceReply() throws {
        for (mode, receive) in Self.variants {
            var c = config(mode, receive)
            c.maxPendingBytesPerConnection = 1 << 20
            try withServer(c, handler: { EchoThenBlockThroughTheHandle() }) { _, port in
                let s = try TestSocket.connect(port: port)
                defer { s.close() }
                s.setTimeout(seconds: 10)
                let rounds = 60
                for _ in 0..<rounds {
                    try s.writeAll([0x61])
                    usleep(1_000)
                }
                let got = try s.readExactly(rounds * 5001)
                // Each call's echo (its bytes, one or several when receives coalesce under load),
                // then as many whole blocks as it wrote.
                var at = 0
                var echoed = 0
                var wellFormed = true
                while at < got.count && wellFormed {
                    var k = 0
                    while at < got.count && got[at] == 0x61 {
                        k += 1
                        at += 1
                    }
                    let blocks = k * 5000
                    wellFormed = k > 0 && at + blocks <= got.count && got[at..<(at + blocks)].allSatisfy { $0 == 0x78 }
                    at += blocks
                    echoed += k
                }
                XCTAssertTrue(wellFormed && echoed == rounds, "\(mode)/\(receive): each call's echo, then its blocks (\(echoed) echoes read)")
            }
        }
    }

    // MARK: Idle and stalled

    /// A connection that only sends (a download, a feed) is not idle: through the proxy, whose
    /// client side then only sends, and straight from a server.
    func testADownloadThatOnlySendsIsNotCutByTheIdleTimeout() throws {
        var upstreamConfig = config(.pooled, .bufferRing)
        upstreamConfig.idleTimeout = .seconds(1)
        let upstream = Server(configuration: upstreamConfig) { Dripper() }
        try upstream.start()
        defer {
            upstream.stop()
            upstream.wait()
        }
        let address = try XCTUnwrap(upstream.boundAddress)
        var c = config(.pooled, .bufferRing)
        c.maxConnections = 16
        c.maxOutboundConnections = 16
        c.idleTimeout = .seconds(1)
        try withServer(c, handler: { TCPProxy(upstream: address) }) { proxy, port in
            for target in [port, address.port] {
                let s = try TestSocket.connect(port: target)
                defer { s.close() }
                s.setTimeout(seconds: 10)
                try s.writeAll([1])
                let got = try s.readToEnd()
                XCTAssertEqual(got.count, Dripper.drops * Dripper.dropSize, target == port ? "through the proxy" : "direct")
            }
            XCTAssertEqual(proxy.statistics.idleClosed, 0)
        }
        XCTAssertEqual(upstream.statistics.idleClosed, 0)
    }

    /// Without an idle timeout the stall check still runs: a peer that sends and never reads is
    /// closed (with a reset) once its echo has not moved for the stall timeout.
    func testAPeerThatNeverReadsIsClosedByTheStallTimeoutWithoutAnIdleTimeout() throws {
        for (mode, receive) in Self.variants {
            var c = config(mode, receive)
            c.idleTimeout = nil
            c.stallTimeout = .milliseconds(500)
            try withServer(c) { server, port in
                let s = try nonReadingClient(port: port)
                let writer = SocketWriter(s, patternBytes(seed: 1, count: 32 << 20))
                defer {
                    writer.stop()
                    s.close()
                }
                XCTAssertTrue(
                    eventually(.seconds(10)) { server.statistics.stalledClosed == 1 && server.statistics.active == 0 },
                    "\(mode)/\(receive): \(server.statistics)")
                XCTAssertEqual(server.statistics.idleClosed, 0)
            }
        }
    }
}
