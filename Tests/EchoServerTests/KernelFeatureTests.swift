import EchoServer
import Foundation
import Glibc
import SocketPool
import TestSupport
import URing
import XCTest

/// The newer kernel features (issue 12), each in use where the kernel has it and each with its
/// fallback: registered ring descriptor, multishot accept into kernel-chosen slots, batched waiting.
final class KernelFeatureTests: ServerTestCase {
    func testDirectMultishotAcceptServesABurstAtTheCapAndLosesNoConnection() throws {
        try requireKernel(.directMultishotAccept)
        var c = config(.pooled, .bufferRing)
        c.maxConnections = 50
        try withServer(c) { server, port in
            XCTAssertTrue(server.statistics.features.contains(.directMultishotAccept), "\(server.statistics.features)")
            // 300 at once: the first 50 are served; the table's backlog of spare slots takes the
            // rest, which are closed cleanly (rejected), none dropped by a full table.
            let clients = try (0..<300).map { _ in try TestSocket.connect(port: port) }
            XCTAssertTrue(
                eventually { server.statistics.accepted == 300 && server.statistics.rejected == 250 },
                "\(server.statistics)")
            var served = 0
            var closedByServer = 0
            for (i, s) in clients.enumerated() {
                s.setTimeout(seconds: 5)
                try? s.writeAll([UInt8(truncatingIfNeeded: i)])
                if let back = try? s.readSome(max: 1), back == [UInt8(truncatingIfNeeded: i)] { served += 1 } else { closedByServer += 1 }
            }
            XCTAssertEqual(served, 50)
            XCTAssertEqual(closedByServer, 250)
            clients.forEach { $0.close() }
            XCTAssertTrue(eventually { server.statistics.closed == 50 && server.statistics.active == 0 })
            XCTAssertEqual(server.statistics.acceptErrors, 0)
            // One multishot accept serves them all: re-armed only if the kernel ended it.
            XCTAssertLessThan(server.statistics.acceptRearms, 5)
            // Served again after the burst.
            XCTAssertEqual(try Self.roundTrip(port: port, [7, 7]), [7, 7])
        }
    }

    /// Batched waiting (off by default): light load still gets every answer, each within about the
    /// timeout; a bad setting is a named error.
    func testBatchedWaitingServesLightLoadWithinItsTimeout() throws {
        for mode in PoolMode.allCases {
            var c = config(mode, .bufferRing)
            c.batchWait = BatchWait(completions: 64, timeout: .milliseconds(2))
            try withServer(c) { server, port in
                let s = try TestSocket.connect(port: port)
                defer { s.close() }
                let start = ContinuousClock.now
                for i in 0..<50 {
                    try s.writeAll([UInt8(i)])
                    XCTAssertEqual(try s.readExactly(1), [UInt8(i)])
                }
                // One message at a time never fills a batch of 64: each turn ends at the timeout.
                XCTAssertLessThan(ContinuousClock.now - start, .seconds(5))
                let big = patternBytes(seed: 9, count: 1 << 20)
                XCTAssertTrue(try Self.roundTrip(port: port, big) == big)
                XCTAssertTrue(eventually { server.statistics.completionsPerTurn.count > 0 })
            }
        }
        for bad in [BatchWait(completions: 0, timeout: .microseconds(50)), BatchWait(completions: 8, timeout: .seconds(1))] {
            var c = config(.pooled, .bufferRing)
            c.batchWait = bad
            XCTAssertThrowsError(try c.validate()) { XCTAssertTrue("\($0)".contains("batchWait."), "\($0)") }
        }
    }

    /// Bundles: a stream larger than a buffer arrives in completions of several buffers, every
    /// byte in order; off, one buffer per completion.
    func testRecvBundlesCarrySeveralBuffersPerCompletionAndLoseNothing() throws {
        try requireKernel(.bufferRing)
        for bundles in [true, false] {
            for mode in PoolMode.allCases {
                var c = config(mode, .bufferRing)
                c.features.remove(.incrementalBuffers)  // which takes one slice per completion
                if !bundles { c.features.remove(.recvBundles) }
                try withServer(c) { server, port in
                    let granted = server.statistics.features.contains(.recvBundles)
                    if bundles && !granted { throw XCTSkip("this kernel lacks IORING_FEAT_RECVSEND_BUNDLE (6.10)") }
                    XCTAssertEqual(granted, bundles)
                    let ok = Locked(0)
                    parallel(4) { t in
                        let bytes = patternBytes(seed: UInt64(40 + t), count: 3 << 20)
                        if (try? Self.roundTrip(port: port, bytes)) == bytes { ok.with { $0 += 1 } }
                    }
                    XCTAssertEqual(ok.get, 4)
                    XCTAssertTrue(eventually { server.statistics.closed == 4 })
                    if bundles {
                        XCTAssertGreaterThan(server.statistics.receiveBundles, 0, "\(mode): some completion carried several buffers")
                    } else {
                        XCTAssertEqual(server.statistics.receiveBundles, 0)
                    }
                }
            }
        }
    }

    /// A handler that keeps nothing: each buffer of a bundle is given back as soon as the handler
    /// returns, before the next one is read. The bytes it sees must still be the stream, in order
    /// (a bundle's followers were once looked up from where its first buffer had been put, which
    /// giving the first back had already changed: the soak crashed on it).
    func testABundleWhoseBuffersAreGivenBackOneByOneStillReadsTheStream() throws {
        try requireKernel(.bufferRing)
        struct Verifying: ConnectionHandler {
            let seen: Locked<(bytes: Int, mismatches: Int)>
            var offsets: [Int: Int] = [:]
            mutating func received(_ bytes: UnsafeMutableRawBufferPointer, connection: Connection) -> Reply {
                let offset = offsets[connection.index, default: 0]
                let expected = patternBytes(seed: 77, offset: offset, count: bytes.count)
                let bad = zip(bytes, expected).filter { $0 != $1 }.count
                offsets[connection.index] = offset + bytes.count
                seen.with { $0.bytes += bytes.count; $0.mismatches += bad }
                return .nothing
            }
            mutating func closed(_ connection: ConnectionID) { offsets[connection.index] = nil }
        }
        for mode in PoolMode.allCases {
            var c = config(mode, .bufferRing)
            c.features.remove(.incrementalBuffers)
            let seen = Locked((bytes: 0, mismatches: 0))
            try withServer(c, handler: { Verifying(seen: seen) }) { server, port in
                if !server.statistics.features.contains(.recvBundles) {
                    throw XCTSkip("this kernel lacks IORING_FEAT_RECVSEND_BUNDLE (6.10)")
                }
                let s = try TestSocket.connect(port: port)
                try s.writeAll(patternBytes(seed: 77, count: 4 << 20))
                s.shutdownWrite()
                XCTAssertTrue(eventually(.seconds(10)) { seen.get.bytes == 4 << 20 }, "\(mode): \(seen.get)")
                XCTAssertEqual(seen.get.mismatches, 0, "\(mode): every byte as sent")
                XCTAssertGreaterThan(server.statistics.receiveBundles, 0)
                s.close()
            }
        }
    }

    /// Bundles under the soak's mix: clients that reset or close mid-stream (their bundles' buffers
    /// are given back one by one, or as stale completions), beside clients whose every echoed byte
    /// is checked. Before the fix the soak crashed in seconds: a bundle's later buffers were read
    /// from where its first had been put after that one was given back, so buffers went back twice.
    func testBundlesSurviveResetsAndClosesMidStream() throws {
        try requireKernel(.bufferRing)
        for mode in PoolMode.allCases {
            var c = config(mode, .bufferRing)
            c.features.remove(.incrementalBuffers)
            try withServer(c) { server, port in
                if !server.statistics.features.contains(.recvBundles) {
                    throw XCTSkip("this kernel lacks IORING_FEAT_RECVSEND_BUNDLE (6.10)")
                }
                let ok = Locked(0)
                for round in 0..<3 {
                    parallel(24) { t in
                        let bytes = patternBytes(seed: UInt64(round * 100 + t), count: 256 << 10)
                        switch t % 3 {
                        case 0:
                            if (try? Self.roundTrip(port: port, bytes)) == bytes { ok.with { $0 += 1 } }
                        case 1:
                            guard let s = try? TestSocket.connect(port: port) else { return }
                            try? s.writeAll(bytes)
                            s.reset()
                        default:
                            guard let s = try? TestSocket.connect(port: port) else { return }
                            try? s.writeAll(bytes)
                            s.close()
                        }
                    }
                }
                XCTAssertEqual(ok.get, 24, "\(mode): every checked client got its bytes back")
                let big = patternBytes(seed: 5, count: 2 << 20)
                XCTAssertTrue(try Self.roundTrip(port: port, big) == big, "\(mode): still echoing")
                XCTAssertTrue(eventually { server.statistics.active == 0 }, "\(server.statistics)")
            }
        }
    }

    /// The soak's crash, in small: a connection the server is closing while its multishot receive
    /// still delivers bundles. Each such bundle's buffers go back one by one (the bytes are
    /// dropped), and the later ones must be read from where the bundle really was: before the fix
    /// they were read from where the first had just been put back, so buffers went back twice and
    /// two connections shared one (the soak then crashed in seconds).
    func testBundlesArrivingForAClosingConnectionGiveBackExactlyTheirBuffers() throws {
        try requireKernel(.bufferRing)
        /// Echoes, except a connection whose first byte is 0xFF: closed at once, whatever follows.
        struct CloseOnMark: ConnectionHandler {
            var started = Set<Int>()
            mutating func received(_ bytes: UnsafeMutableRawBufferPointer, connection: Connection) -> Reply {
                guard started.insert(connection.index).inserted else { return .send(bytes.count) }
                return bytes.first == 0xFF ? .close : .send(bytes.count)
            }
            mutating func closed(_ connection: ConnectionID) { started.remove(connection.index) }
        }
        for mode in PoolMode.allCases {
            var c = config(mode, .bufferRing)
            c.features.remove(.incrementalBuffers)
            try withServer(c, handler: { CloseOnMark() }) { server, port in
                if !server.statistics.features.contains(.recvBundles) {
                    throw XCTSkip("this kernel lacks IORING_FEAT_RECVSEND_BUNDLE (6.10)")
                }
                let ok = Locked(0)
                for round in 0..<4 {
                    parallel(16) { t in
                        if t % 2 == 0 {
                            var bytes = patternBytes(seed: UInt64(round * 50 + t), count: 512 << 10)
                            if bytes[0] == 0xFF { bytes[0] = 0 }
                            if (try? Self.roundTrip(port: port, bytes)) == bytes { ok.with { $0 += 1 } }
                        } else {
                            guard let s = try? TestSocket.connect(port: port) else { return }
                            try? s.writeAll([0xFF] + [UInt8](repeating: 7, count: 1 << 20))
                            s.close()
                        }
                    }
                }
                XCTAssertEqual(ok.get, 32, "\(mode): every echoing client got exactly its bytes")
                XCTAssertTrue(eventually { server.statistics.active == 0 }, "\(server.statistics)")
            }
        }
    }
}
