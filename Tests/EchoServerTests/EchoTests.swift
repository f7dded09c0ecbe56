import SocketPool
import URing
import EchoServer
import Foundation
import Glibc
import TestSupport
import XCTest

final class EchoTests: ServerTestCase {
    func testByteExactEchoOfOneByteEveryByteValueAndOneMebibyte() throws {
        for (mode, receive) in Self.variants {
            try withServer(config(mode, receive)) { _, port in
                XCTAssertEqual(try Self.roundTrip(port: port, [42]), [42])
                let all = (0...255).map { UInt8($0) }
                XCTAssertEqual(try Self.roundTrip(port: port, all), all)
                let big = patternBytes(seed: 7, count: 1 << 20)
                XCTAssertTrue(try Self.roundTrip(port: port, big) == big, "\(mode)/\(receive): 1 MiB")
            }
        }
    }

    func testSixtyFourMebibytesStreamedWhileReading() throws {
        let total = 64 << 20
        for (mode, receive) in Self.variants {
            try withServer(config(mode, receive)) { server, port in
                let s = try TestSocket.connect(port: port)
                defer { s.close() }
                let chunk = 256 * 1024
                let writerDone = Locked(false)
                Thread {
                    for offset in stride(from: 0, to: total, by: chunk) {
                        let bytes = patternBytes(seed: 64, offset: offset, count: chunk)
                        if (try? s.writeAll(bytes)) == nil { break }
                    }
                    s.shutdownWrite()
                    writerDone.with { $0 = true }
                }.start()
                var received = 0
                var mismatch = false
                var pending: [UInt8] = []
                while received < total {
                    let got = try s.readSome(max: 1 << 20)
                    if got.isEmpty { break }
                    pending += got
                    let whole = pending.count / 4096 * 4096
                    if whole > 0 {
                        if Array(pending[0..<whole]) != patternBytes(seed: 64, offset: received, count: whole) {
                            mismatch = true
                        }
                        received += whole
                        pending.removeFirst(whole)
                    }
                }
                received += pending.count
                XCTAssertEqual(received, total, "\(mode)/\(receive)")
                XCTAssertFalse(mismatch, "\(mode)/\(receive): every byte in order")
                XCTAssertTrue(eventually { writerDone.get })
                XCTAssertTrue(eventually { server.statistics.bytesOut >= UInt64(total) })
            }
        }
    }

    func testTwoHundredInterleavedConnectionsDoNotCrossTalk() throws {
        for (mode, receive) in Self.variants {
            try withServer(config(mode, receive)) { _, port in
                let sockets = try (0..<200).map { _ in try TestSocket.connect(port: port) }
                defer { sockets.forEach { $0.close() } }
                // Round-robin: each connection sends its own stream in 5 pieces, interleaved with
                // everyone else's, and must read back exactly its own bytes.
                let pieces = 5
                let size = 1000
                for p in 0..<pieces {
                    for (i, s) in sockets.enumerated() {
                        try s.writeAll(patternBytes(seed: UInt64(1000 + i), offset: p * size, count: size))
                    }
                }
                for (i, s) in sockets.enumerated() {
                    let back = try s.readExactly(pieces * size)
                    XCTAssertEqual(back, patternBytes(seed: UInt64(1000 + i), count: pieces * size), "connection \(i)")
                }
            }
        }
    }

    func testThousandConcurrentConnectionsEachVerified() throws {
        for (mode, receive) in Self.variants {
            try withServer(config(mode, receive)) { server, port in
                let ok = Locked(0)
                parallel(8) { t in
                    var mine: [TestSocket] = []
                    for i in 0..<125 {
                        if let s = try? TestSocket.connect(port: port) {
                            mine.append(s)
                            _ = i
                        }
                    }
                    for (i, s) in mine.enumerated() {
                        let bytes = patternBytes(seed: UInt64(t * 1000 + i), count: 300)
                        if (try? s.writeAll(bytes)) != nil, (try? s.readExactly(300)) == bytes { ok.with { $0 += 1 } }
                    }
                    mine.forEach { $0.close() }
                }
                XCTAssertEqual(ok.get, 1000, "\(mode)/\(receive)")
                XCTAssertTrue(eventually { server.statistics.closed == 1000 })
                XCTAssertGreaterThanOrEqual(server.statistics.sessions.highWater, 100)
            }
        }
    }

    func testFiveThousandSequentialCyclesLeaveDescriptorCountFlat() throws {
        for (mode, receive) in Self.variants {
            try withServer(config(mode, receive)) { server, port in
                XCTAssertEqual(try Self.roundTrip(port: port, [1]), [1])
                XCTAssertTrue(eventually { server.statistics.closed == 1 })
                let before = openDescriptorCount()
                var failures = 0
                for i in 0..<5000 {
                    let bytes = patternBytes(seed: UInt64(i), count: 64)
                    if (try? Self.roundTrip(port: port, bytes)) != bytes { failures += 1 }
                }
                XCTAssertEqual(failures, 0, "\(mode)/\(receive)")
                XCTAssertTrue(eventually { server.statistics.closed == 5001 }, "\(mode)/\(receive): all closed")
                XCTAssertEqual(openDescriptorCount(), before, "\(mode)/\(receive): descriptors flat")
                XCTAssertEqual(server.statistics.active, 0)
            }
        }
    }
}
