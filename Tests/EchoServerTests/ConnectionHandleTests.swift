import EchoServer
import Foundation
import Glibc
import SocketPool
import TestSupport
import URing
import XCTest

/// Hands each new connection's handle out, and says nothing itself.
struct HandleGiver: ConnectionHandler {
    let handles: Locked<[ConnectionHandle]>
    mutating func opened(_ connection: Connection) { handles.with { $0.append(connection.handle) } }
    mutating func received(_ bytes: UnsafeMutableRawBufferPointer, connection: Connection) -> Reply { .nothing }
}

/// Writes, closes and aborts from threads and tasks that are not the ring's.
final class ConnectionHandleTests: ServerTestCase {
    /// Record `n` of writer `w`: 64 bytes, the writer and sequence number, then a pattern of both.
    static func record(_ w: Int, _ n: Int) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 64)
        bytes[0] = UInt8(w)
        bytes[1] = UInt8(n & 0xFF)
        bytes[2] = UInt8(n >> 8)
        for i in 3..<64 { bytes[i] = UInt8(truncatingIfNeeded: w &* 31 &+ n &* 7 &+ i) }
        return bytes
    }

    func testEightThreadsWriteAThousandContiguousWritesEachToOneConnection() throws {
        for (mode, receive) in Self.variants {
            let handles = Locked<[ConnectionHandle]>([])
            try withServer(config(mode, receive), handler: { HandleGiver(handles: handles) }) { server, port in
                let s = try TestSocket.connect(port: port)
                defer { s.close() }
                s.setTimeout(seconds: 10)
                XCTAssertTrue(eventually { handles.get.count == 1 })
                let handle = handles.get[0]
                let writers = 8
                let writes = 1000
                // The reader runs beside the writers, so their room keeps coming back.
                let received = Locked<[UInt8]>([])
                let reader = Thread {
                    if let bytes = try? s.readExactly(writers * writes * 64) { received.with { $0 = bytes } }
                }
                reader.start()
                parallel(writers) { w in
                    for n in 0..<writes {
                        let record = Self.record(w, n)
                        var result = handle.tryWrite(record)
                        while result == .full {
                            usleep(50)
                            result = handle.tryWrite(record)
                        }
                        XCTAssertEqual(result, .queued)
                    }
                }
                XCTAssertTrue(eventually(.seconds(20)) { received.get.count == writers * writes * 64 }, "\(mode)/\(receive)")
                let bytes = received.get
                var next = [Int](repeating: 0, count: writers)
                var intact = 0
                for r in stride(from: 0, to: bytes.count, by: 64) {
                    let record = Array(bytes[r..<r + 64])
                    let w = Int(record[0])
                    guard w < writers else { continue }
                    let n = Int(record[1]) | Int(record[2]) << 8
                    if record == Self.record(w, n) && n == next[w] {
                        intact += 1
                        next[w] += 1
                    }
                }
                XCTAssertEqual(intact, writers * writes, "\(mode)/\(receive): every write whole, each writer's in order")
            }
        }
    }

    func testAHandleOfAClosedConnectionIsClosedEvenWhenItsSessionIsReused() throws {
        var c = config(.pooled, .bufferRing)
        c.maxConnections = 1  // one session: the next connection takes the same one
        let handles = Locked<[ConnectionHandle]>([])
        try withServer(c, handler: { HandleGiver(handles: handles) }) { server, port in
            let first = try TestSocket.connect(port: port)
            XCTAssertTrue(eventually { handles.get.count == 1 })
            let old = handles.get[0]
            XCTAssertTrue(old.isOpen)
            first.close()
            XCTAssertTrue(eventually { !old.isOpen && server.statistics.closed == 1 })
            let second = try TestSocket.connect(port: port)
            defer { second.close() }
            second.setTimeout(seconds: 1)
            XCTAssertTrue(eventually { handles.get.count == 2 })
            let new = handles.get[1]
            XCTAssertEqual(new.id.index, old.id.index, "the same session")
            XCTAssertNotEqual(new.id.epoch, old.id.epoch)
            XCTAssertEqual(old.tryWrite("not for you"), .closed)
            old.close()
            old.abort()
            XCTAssertEqual(new.tryWrite("yours"), .queued)
            XCTAssertEqual(try second.readExactly(5), Array("yours".utf8), "only the new connection's own bytes")
            XCTAssertTrue(new.isOpen, "the old handle's close did not reach it")
        }
    }

    func testAnAsyncWriteWaitsForRoomAndAFullTryWriteIsRefused() throws {
        var c = config(.pooled, .bufferRing)
        c.maxOutputBytesPerConnection = 64 * 1024
        let handles = Locked<[ConnectionHandle]>([])
        try withServer(c, handler: { HandleGiver(handles: handles) }) { server, port in
            let s = try TestSocket.connect(port: port)
            defer { s.close() }
            s.setTimeout(seconds: 10)
            XCTAssertTrue(eventually { handles.get.count == 1 })
            let handle = handles.get[0]
            let chunk = [UInt8](repeating: 0x61, count: 16 * 1024)
            let total = 1024  // 16 MiB: more than loopback's socket buffers take
            let written = Locked(0)
            let done = DispatchSemaphore(value: 0)
            Task {
                for _ in 0..<total {
                    let result = await handle.write(chunk)
                    XCTAssertEqual(result, .queued)
                    written.with { $0 += 1 }
                }
                done.signal()
            }
            // Nobody reads: the writer stops well before its 16 MiB, at about its room plus what
            // the sockets hold.
            usleep(500_000)
            let stalled = written.get
            XCTAssertLessThan(stalled, total, "the async writer waits for room")
            XCTAssertEqual(handle.tryWrite(chunk), .full, "a write that does not wait is refused")
            XCTAssertEqual(handle.tryWrite([UInt8](repeating: 0, count: 65 * 1024)), .full, "larger than the bound")
            let back = try s.readExactly(total * chunk.count)
            XCTAssertEqual(back.count, total * chunk.count, "every byte, once the peer reads")
            XCTAssertEqual(done.wait(timeout: .now() + 10), .success)
            XCTAssertEqual(written.get, total)
            XCTAssertGreaterThan(stalled, 0)
        }
    }
}
