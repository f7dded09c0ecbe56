import SocketPool
import URing
import EchoServer
import Foundation
import Glibc
import TestSupport
import XCTest

/// Bad clients against a real server in both modes. After every scenario the server must still
/// echo, its sessions and descriptors must be back to the baseline, and no connection may have
/// seen another's bytes (each connection's stream is a different window of a random block).
final class AdversarialTests: ServerTestCase {
    static let block = SharedBlock(count: 1 << 20, seed: 0xC0FFEE)

    /// Runs `scenario` against each mode (buffer ring), then checks the server is back to baseline.
    func scenario(
        _ name: String, receive: ReceiveStrategy = .bufferRing, configure: (inout ServerConfiguration) -> Void = { _ in },
        _ body: (Server<EchoHandler>, UInt16) throws -> Void
    ) throws {
        for mode in PoolMode.allCases {
            var c = config(mode, receive)
            configure(&c)
            try withServer(c) { server, port in
                XCTAssertEqual(try Self.roundTrip(port: port, [0]), [0])
                // Statistics are published per housekeeping tick: wait for the probe's close to show.
                XCTAssertTrue(eventually { server.statistics.closed == 1 && server.statistics.active == 0 })
                let fdBaseline = openDescriptorCount()
                let slotBaseline = server.statistics.slots.inUse
                try body(server, port)
                let settled = eventually(.seconds(10)) {
                    let s = server.statistics
                    return s.active == 0 && s.sessions.inUse == 0 && s.slots.inUse == slotBaseline && s.buffersHeld == 0
                }
                XCTAssertTrue(settled, "\(name) \(mode): back to baseline: \(server.statistics)")
                _ = eventually(.seconds(5)) { openDescriptorCount() == fdBaseline }
                XCTAssertEqual(openDescriptorCount(), fdBaseline, "\(name) \(mode): descriptors back to baseline")
                let probe = patternBytes(seed: 99, count: 10_000)
                XCTAssertTrue(try Self.roundTrip(port: port, probe) == probe, "\(name) \(mode): still echoes")
            }
        }
    }

    func scripts(_ count: Int, seed: UInt64, _ make: (inout SplitMix64, Int) -> ClientScript) -> [ClientScript] {
        var rng = SplitMix64(seed: seed)
        return (0..<count).map { make(&rng, $0) }
    }

    /// Urgent data (MSG_OOB) between two writes that arrive before the server reads: a receive
    /// stops at the urgent mark, so a read shorter than the buffer does not mean the socket is
    /// drained (on epoll the bytes after the mark stalled until the client sent again).
    func testUrgentDataDoesNotStallTheBytesAfterIt() throws {
        for (mode, receive) in Self.variants {
            try withServer(config(mode, receive)) { server, port in
                let s = try TestSocket.connect(port: port)
                defer { s.close() }
                s.setTimeout(seconds: 3)
                // Back to back: the three arrive before the server reads them (the test failed
                // first on epoll, which took the short read at the mark for a drained socket).
                try s.writeAll(Array("AAAA".utf8))
                var b: UInt8 = UInt8(ascii: "B")
                XCTAssertEqual(send(s.fd, &b, 1, Int32(MSG_OOB)), 1)
                try s.writeAll(Array("CCCC".utf8))
                // The urgent byte is out of band (not inline): the stream is the other eight.
                XCTAssertEqual(String(decoding: try s.readExactly(8), as: UTF8.self), "AAAACCCC", "\(mode)/\(receive)")
            }
        }
    }

    func testFloodOfConnectAndClose() throws {
        try scenario("flood") { server, port in
            let before = server.statistics.closed
            XCTAssertEqual(before, 1)
            parallel(8) { t in
                for i in 0..<100 {
                    guard let s = try? TestSocket.connect(port: port) else { continue }
                    if (t + i) % 3 == 0 { s.reset() } else { s.close() }
                }
            }
            XCTAssertTrue(eventually(.seconds(10)) { server.statistics.closed - before == 800 })
        }
    }

    func testResetsMidSendAndMidEcho() throws {
        try scenario("resets") { _, port in
            let list = scripts(120, seed: 1) { rng, i in
                let length = Int.random(in: 10_000...300_000, using: &rng)
                let sendUntil = Int.random(in: 1...length, using: &rng)
                return ClientScript(
                    start: i * 7919, length: length, sendUntil: sendUntil,
                    readUntil: Int.random(in: 0...sendUntil, using: &rng), chunk: 16_384, ending: .reset)
            }
            let outcome = runClients(list, block: Self.block, port: port)
            XCTAssertEqual(outcome.mismatches, 0)
            XCTAssertEqual(outcome.completed, 120)
        }
    }

    func testHalfCloseAtEveryStage() throws {
        try scenario("half-close") { _, port in
            // Right after connect, after part of a message, after a full exchange, mid-echo.
            XCTAssertEqual(try Self.roundTrip(port: port, []), [])
            let s1 = try TestSocket.connect(port: port)
            try s1.writeAll(Array(Self.block.bytes[0..<3000]))
            s1.shutdownWrite()
            XCTAssertEqual(try s1.readToEnd(), Array(Self.block.bytes[0..<3000]))
            s1.close()
            let s2 = try TestSocket.connect(port: port)
            try s2.writeAll([1, 2, 3])
            XCTAssertEqual(try s2.readExactly(3), [1, 2, 3])
            s2.shutdownWrite()
            XCTAssertEqual(try s2.readToEnd(), [])
            s2.close()
            let list = scripts(100, seed: 2) { rng, i in
                let length = Int.random(in: 0...200_000, using: &rng)
                return ClientScript(start: i * 104_729, length: length, sendUntil: length, readUntil: 0,
                                    chunk: Int.random(in: 1...65_536, using: &rng), ending: .halfClose)
            }
            let outcome = runClients(list, block: Self.block, port: port)
            XCTAssertEqual(outcome.mismatches, 0)
            XCTAssertEqual(outcome.completed, 100, "every half-closed client got its full echo, then EOF")
        }
    }

    func testSlowlorisTricklesDoNotStarveOthers() throws {
        try scenario("slowloris") { server, port in
            let trickling = try (0..<30).map { _ in try TestSocket.connect(port: port) }
            let stop = Locked(false)
            let trickled = Locked(0)
            let group = DispatchGroup()
            group.enter()
            Thread {
                // 1 byte per 10 ms on every slow connection, for about a second, each byte echoed.
                for round in 0..<100 where !stop.get {
                    for s in trickling {
                        let byte = [UInt8(truncatingIfNeeded: round)]
                        if (try? s.writeAll(byte)) != nil, (try? s.readExactly(1)) == byte { trickled.with { $0 += 1 } }
                    }
                    usleep(10_000)
                }
                group.leave()
            }.start()
            // Meanwhile ordinary clients are served at full speed.
            var served = 0
            for i in 0..<300 {
                let bytes = patternBytes(seed: UInt64(i), count: 200)
                if (try? Self.roundTrip(port: port, bytes)) == bytes { served += 1 }
            }
            stop.with { $0 = true }
            XCTAssertEqual(group.wait(timeout: .now() + 20), .success)
            XCTAssertEqual(served, 300)
            XCTAssertGreaterThan(trickled.get, 30)
            trickling.forEach { $0.close() }
            _ = server
        }
    }

    func testSlowlorisAgainstTheIdleTimeoutIsCut() throws {
        // A client that trickles slower than the idle timeout is closed; the server keeps serving.
        try scenario("slowloris-idle", configure: { $0.idleTimeout = .milliseconds(200) }) { server, port in
            let s = try TestSocket.connect(port: port)
            try s.writeAll([1])
            XCTAssertEqual(try s.readExactly(1), [1])
            usleep(600_000)
            XCTAssertEqual(try s.readSome(), [], "closed by the idle timeout")
            s.close()
            XCTAssertGreaterThanOrEqual(server.statistics.idleClosed, 1)
        }
    }

    func testBinaryGarbageAndTLSAndHTTPBytesAreEchoedExactly() throws {
        try scenario("garbage") { _, port in
            let tlsClientHello: [UInt8] = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xFC, 0x03, 0x03] + (0..<500).map {
                UInt8(truncatingIfNeeded: $0 &* 37)
            }
            let http = Array("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".utf8)
            let zeros = [UInt8](repeating: 0, count: 70_000)
            let ones = [UInt8](repeating: 0xFF, count: 70_000)
            var rng = SplitMix64(seed: 3)
            let random = (0..<500_000).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            for payload in [tlsClientHello, http, zeros, ones, random, Array(http + tlsClientHello + zeros)] {
                XCTAssertTrue(try Self.roundTrip(port: port, payload) == payload)
            }
        }
    }

    func testOneMebibyteOnFiveHundredConnectionsAtOnce() throws {
        try scenario("500x1MiB") { server, port in
            let before = server.statistics.bytesOut
            let outcomes = Locked(ClientOutcome())
            parallel(10, timeout: 120) { t in
                let list = (0..<50).map { i in
                    ClientScript(start: (t * 50 + i) * 2053, length: 1 << 20, sendUntil: 1 << 20, readUntil: 0,
                                 chunk: 65_536, ending: .halfClose)
                }
                let o = runClients(list, block: Self.block, port: port, timeout: .seconds(110))
                outcomes.with {
                    $0.completed += o.completed
                    $0.mismatches += o.mismatches
                    $0.failures += o.failures
                }
            }
            XCTAssertEqual(outcomes.get.mismatches, 0)
            XCTAssertEqual(outcomes.get.completed, 500)
            XCTAssertTrue(eventually { server.statistics.bytesOut - before >= 500 << 20 })
        }
    }

    func testRandomizedClientBehaviourWithEveryEchoedByteChecked() throws {
        let seed = UInt64(ProcessInfo.processInfo.environment["ADVERSARIAL_SEED"] ?? "") ?? 20261126
        print("randomized clients: seed \(seed) (set ADVERSARIAL_SEED to repeat)")
        for receive in ReceiveStrategy.allCases {
            try scenario("random", receive: receive) { _, port in
                let list = scripts(300, seed: seed) { rng, i in
                    let length = Int.random(in: 0...150_000, using: &rng)
                    let ending = ClientEnding.allCases.randomElement(using: &rng)!
                    let sendUntil = ending == .halfClose ? length : Int.random(in: 0...length, using: &rng)
                    return ClientScript(
                        start: Int.random(in: 0..<(1 << 20), using: &rng), length: length, sendUntil: sendUntil,
                        readUntil: Int.random(in: 0...sendUntil, using: &rng),
                        chunk: Int.random(in: 1...65_536, using: &rng), ending: ending)
                }
                let outcome = runClients(list, block: Self.block, port: port)
                XCTAssertEqual(outcome.mismatches, 0, "no byte differs from what its own connection sent")
                XCTAssertEqual(outcome.completed, 300, "\(outcome)")
            }
        }
    }

    /// Writes a greeting, then aborts.
    struct AbortsAtOnce: ConnectionHandler {
        mutating func opened(_ connection: Connection) {
            connection.write("dropped")
            connection.abort()
        }
        mutating func received(_ bytes: UnsafeMutableRawBufferPointer, connection: Connection) -> Reply { .nothing }
    }

    /// An abort resets the peer (SO_LINGER 0, then the close): it reads a reset, not a clean end
    /// of stream, in every mode (a descriptor, or a registered-file slot).
    func testAnAbortResetsThePeer() throws {
        for (mode, receive) in Self.variants {
            try withServer(config(mode, receive), handler: { AbortsAtOnce() }) { server, port in
                let s: TestSocket
                do {
                    s = try TestSocket.connect(port: port)
                } catch {
                    // The reset can reach the client before its connect() returns (seen once in
                    // CI): connect reports it then, as a reset all the same.
                    XCTAssertEqual((error as? URingError)?.errno, .connectionReset, "\(mode)/\(receive): \(error)")
                    return
                }
                defer { s.close() }
                s.setTimeout(seconds: 5)
                XCTAssertThrowsError(try s.readSome(), "\(mode)/\(receive): a reset") { error in
                    XCTAssertEqual((error as? URingError)?.errno, .connectionReset, "\(mode)/\(receive): \(error)")
                }
            }
        }
    }
}
