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

/// Greets each connection with its ring's index, and forwards what a connection receives to the
/// first connection of the other ring, through that one's handle, from the receiving ring's thread.
struct CrossRingForwarder: ConnectionHandler {
    let firsts: Locked<[Int: ConnectionHandle]>
    mutating func opened(_ connection: Connection) {
        let ring = connection.ring.index
        firsts.with { if $0[ring] == nil { $0[ring] = connection.handle } }
        connection.write("ring \(ring)\n")
    }
    mutating func received(_ bytes: UnsafeMutableRawBufferPointer, connection: Connection) -> Reply {
        let other = 1 - connection.ring.index
        if let target = firsts.get[other] {
            XCTAssertEqual(target.tryWrite(UnsafeRawBufferPointer(bytes)), .queued)
        }
        return .nothing
    }
}

/// Keeps every message posted from outside the rings: (value, bytes, thread name).
struct MessageKeeper: ConnectionHandler {
    let messages: Locked<[(UInt64, [UInt8], String)]>
    mutating func received(_ bytes: UnsafeMutableRawBufferPointer, connection: Connection) -> Reply { .send(bytes.count) }
    mutating func received(message: RingMessage, ring: RingContext) {
        XCTAssertEqual(message.from, RingMessage.outside)
        let thread = (try? readFile("/proc/thread-self/comm")) ?? "?"
        messages.with { $0.append((message.value, Array(message.bytes), thread)) }
    }
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

    /// A write from one ring's callback to another ring's connection wakes that ring with
    /// `MSG_RING` (once per batch), or with its eventfd where `MSG_RING` is off; either way every
    /// byte arrives.
    func testAWriteFromAnotherRingWakesItWithMessageRing() throws {
        // (On epoll there is no MSG_RING: the eventfd variant alone.)
        for messageRing in testDriver == .ioUring ? [true, false] : [false] {
            var c = config(.pooled, .bufferRing)
            c.threads = 2
            if !messageRing { c.features.remove(.messageRing) }
            let firsts = Locked<[Int: ConnectionHandle]>([:])
            try withServer(c, handler: { CrossRingForwarder(firsts: firsts) }) { server, port in
                if messageRing {
                    try XCTSkipUnless(server.statistics.features.contains(.messageRing), "this kernel has no MSG_RING")
                }
                // Connect until each ring has its first connection (SO_REUSEPORT spreads them).
                var clients: [Int: TestSocket] = [:]
                var others: [TestSocket] = []
                for _ in 0..<64 where clients.count < 2 {
                    let s = try TestSocket.connect(port: port)
                    s.setTimeout(seconds: 5)
                    let greeting = String(decoding: try s.readExactly(7), as: UTF8.self)
                    let ring = greeting == "ring 0\n" ? 0 : 1
                    if clients[ring] == nil { clients[ring] = s } else { others.append(s) }
                }
                defer { for s in others + Array(clients.values) { s.close() } }
                guard let a = clients[0], let b = clients[1] else { throw XCTSkip("SO_REUSEPORT put 64 connections on one ring") }
                let before = server.inboxWakesByMessageRing(ring: 1)
                for i in 0..<200 {
                    let line = Array("line \(i) from ring 0\n".utf8)
                    try a.writeAll(line)
                    XCTAssertEqual(try b.readExactly(line.count), line, "\(messageRing): line \(i) arrives on ring 1")
                }
                let wakes = server.inboxWakesByMessageRing(ring: 1) - before
                if messageRing {
                    XCTAssertGreaterThan(wakes, 0, "ring 1 woken by MSG_RING")
                    XCTAssertLessThanOrEqual(wakes, 200, "at most one wake per write")
                } else {
                    XCTAssertEqual(wakes, 0, "no MSG_RING when it is off: the eventfd")
                }
            }
        }
    }

    /// A ring handle posts to the ring's handler from any thread: every message arrives once, on
    /// the ring's thread, in each poster's order; a task that prefers the ring's executor runs
    /// there; after the stop a post gets .noSuchRing.
    func testARingHandlePostsFromAnyThreadAndRunsTasksOnTheRing() throws {
        let messages = Locked<[(UInt64, [UInt8], String)]>([])
        var c = config(.pooled, .bufferRing)
        c.mailboxBytes = 4096  // small: the posters meet a full inbox and try again
        var ring: RingHandle?
        try withServer(c, handler: { MessageKeeper(messages: messages) }) { server, port in
            XCTAssertNil(server.ring(1), "one ring only")
            let handle = try XCTUnwrap(server.ring(0))
            ring = handle
            XCTAssertEqual(handle.index, 0)
            let posters = 4
            let each = 1000
            parallel(posters) { p in
                for n in 0..<each {
                    let bytes = [UInt8(p), UInt8(n & 0xFF), UInt8(n >> 8)]
                    var result = handle.post(bytes, value: UInt64(p << 32 | n))
                    while result == .full {
                        usleep(50)
                        result = handle.post(bytes, value: UInt64(p << 32 | n))
                    }
                    XCTAssertEqual(result, .posted)
                }
            }
            XCTAssertTrue(eventually { messages.get.count == posters * each }, "\(messages.get.count) delivered")
            var next = [Int](repeating: 0, count: posters)
            for (value, bytes, thread) in messages.get {
                let p = Int(value >> 32)
                let n = Int(value & 0xFFFF_FFFF)
                XCTAssertEqual(n, next[p], "poster \(p)'s messages in order")
                XCTAssertEqual(bytes, [UInt8(p), UInt8(n & 0xFF), UInt8(n >> 8)])
                XCTAssertTrue(thread.hasPrefix("uring-ring-"), thread)
                next[p] = n + 1
            }
            XCTAssertEqual(next, [Int](repeating: each, count: posters))
            XCTAssertEqual(
                handle.post([UInt8](repeating: 0, count: 4096 / 4 + 1)), .full, "larger than a quarter never fits")
            // A task that prefers the ring's executor runs on the ring's thread.
            let name = Locked("")
            let done = DispatchSemaphore(value: 0)
            Task(executorPreference: handle.executor) {
                name.with { $0 = (try? readFile("/proc/thread-self/comm")) ?? "?" }
                done.signal()
            }
            XCTAssertEqual(done.wait(timeout: .now() + 5), .success)
            XCTAssertTrue(name.get.hasPrefix("uring-ring-"), name.get)
        }
        XCTAssertEqual(ring?.post([1]), .noSuchRing, "the ring has stopped")
    }

    /// A handle made on one ring for another ring's connection reaches that connection (an ID's
    /// ring decides), and a write larger than any inbox record can hold is refused at once rather
    /// than retried for good.
    func testAHandleGoesToItsConnectionsRingAndAnImpossibleWriteIsRefused() throws {
        var c = config(.pooled, .bufferRing)
        c.threads = 2
        c.mailboxBytes = 64 << 10
        let ids = Locked<[Int: ConnectionID]>([:])
        let crossed = Locked<[ConnectionHandle]>([])
        struct Crosser: ConnectionHandler {
            let ids: Locked<[Int: ConnectionID]>
            let crossed: Locked<[ConnectionHandle]>
            mutating func opened(_ connection: Connection) {
                let ring = connection.ring.index
                ids.with { if $0[ring] == nil { $0[ring] = connection.id } }
                connection.write("ring \(ring)\n")
            }
            mutating func received(_ bytes: UnsafeMutableRawBufferPointer, connection: Connection) -> Reply {
                // A handle for the other ring's first connection, made here.
                if let other = ids.get[1 - connection.ring.index] {
                    crossed.with { $0.append(connection.ring.handle(other)) }
                }
                return .nothing
            }
        }
        try withServer(c, handler: { Crosser(ids: ids, crossed: crossed) }) { server, port in
            var clients: [Int: TestSocket] = [:]
            var others: [TestSocket] = []
            for _ in 0..<64 where clients.count < 2 {
                let s = try TestSocket.connect(port: port)
                s.setTimeout(seconds: 5)
                let ring = String(decoding: try s.readExactly(7), as: UTF8.self) == "ring 0\n" ? 0 : 1
                if clients[ring] == nil { clients[ring] = s } else { others.append(s) }
            }
            defer { for s in others + Array(clients.values) { s.close() } }
            guard let a = clients[0], let b = clients[1] else { throw XCTSkip("SO_REUSEPORT put 64 connections on one ring") }
            try a.writeAll([1])
            XCTAssertTrue(eventually { crossed.get.count == 1 })
            let handle = crossed.get[0]
            XCTAssertEqual(handle.tryWrite("to ring 1"), .queued)
            XCTAssertEqual(try b.readExactly(9), Array("to ring 1".utf8), "the write reached ring 1's connection")
            // Larger than an inbox record can ever be (a quarter of the inbox): .full at once.
            let big = [UInt8](repeating: 7, count: 40 << 10)
            XCTAssertEqual(handle.tryWrite(big), .full)
            let done = DispatchSemaphore(value: 0)
            let result = Locked<WriteResult?>(nil)
            Task {
                let r = await handle.write(big)
                result.with { $0 = r }
                done.signal()
            }
            XCTAssertEqual(done.wait(timeout: .now() + 5), .success, "an impossible write returns")
            XCTAssertEqual(result.get, .full)
        }
    }

    /// A task on the ring's own executor writes through a handle of that ring: the ring takes the
    /// write before it next blocks. It used to block until some other completion came: 20 writes
    /// one after another, each read before the next, took 0.8 s here; now about 11 ms.
    func testATaskOnTheRingWritingThroughAHandleIsNotLeftForATick() throws {
        let handles = Locked<[ConnectionHandle]>([])
        try withServer(config(.pooled, .bufferRing), handler: { HandleGiver(handles: handles) }) { server, port in
            let s = try TestSocket.connect(port: port)
            defer { s.close() }
            s.setTimeout(seconds: 5)
            XCTAssertTrue(eventually { handles.get.count == 1 })
            let handle = handles.get[0]
            let ring = try XCTUnwrap(server.ring(0))
            let started = ContinuousClock.now
            for i in 0..<20 {
                let line = Array("line \(i)\n".utf8)
                Task(executorPreference: ring.executor) { XCTAssertEqual(handle.tryWrite(line), .queued) }
                XCTAssertEqual(try s.readExactly(line.count), line)
            }
            let elapsed = ContinuousClock.now - started
            XCTAssertLessThan(elapsed, .milliseconds(400), "20 writes from the ring's own tasks took \(elapsed)")
        }
    }

    // MARK: Full inboxes, waiting for buffers

    /// Once per ring, on the first bytes it receives: fills the other ring's inbox with writes to
    /// the other ring's first connection, waits until the other ring has done the same, then closes
    /// that connection through its handle. With both inboxes full, each close waits for the other
    /// ring to drain its inbox, which waits in its own close.
    struct CrossCloser: ConnectionHandler {
        let firsts: Locked<[Int: ConnectionHandle]>
        let rings: Locked<[RingHandle]>
        let arrived: Locked<Int>
        let closed: Locked<Int>
        var fired = false
        mutating func opened(_ connection: Connection) {
            let ring = connection.ring.index
            firsts.with { if $0[ring] == nil { $0[ring] = connection.handle } }
        }
        mutating func received(_ bytes: UnsafeMutableRawBufferPointer, connection: Connection) -> Reply {
            guard !fired, let target = firsts.get[1 - connection.ring.index] else { return .nothing }
            fired = true
            // Both rings here (neither drains its inbox), then both fill the other's, then close.
            meet(1)
            let block = [UInt8](repeating: 1, count: 1024)
            var fills = 0
            while target.tryWrite(block) == .queued && fills < 1000 { fills += 1 }
            // The rest with empty messages (the smallest record), until not even one fits.
            let other = rings.get[1 - connection.ring.index]
            while other.post([]) == .posted && fills < 2000 { fills += 1 }
            meet(2)
            target.close()
            closed.with { $0 += 1 }
            return .nothing
        }
        func meet(_ round: Int) {
            arrived.with { $0 += 1 }
            let deadline = ContinuousClock.now + .seconds(5)
            while arrived.get < 2 * round && ContinuousClock.now < deadline { usleep(1_000) }
        }
    }

    /// Two rings each close the other's connection while both inboxes are full: neither waits for
    /// the other (they used to spin in the close for good, and stop never ended), and the closes
    /// take effect.
    func testTwoRingsClosingEachOthersConnectionsWithFullInboxesDoNotLivelock() throws {
        var c = config(.pooled, .bufferRing)
        c.threads = 2
        c.mailboxBytes = 4096
        let firsts = Locked<[Int: ConnectionHandle]>([:])
        let rings = Locked<[RingHandle]>([])
        let arrived = Locked(0)
        let closed = Locked(0)
        try withServer(c, handler: { CrossCloser(firsts: firsts, rings: rings, arrived: arrived, closed: closed) }) { server, port in
            rings.with { $0 = [server.ring(0)!, server.ring(1)!] }
            var clients: [TestSocket] = []
            defer { for s in clients { s.close() } }
            while firsts.get.count < 2 && clients.count < 64 {
                let s = try TestSocket.connect(port: port)
                s.setTimeout(seconds: 10)
                clients.append(s)
                _ = eventually { server.statistics.accepted == UInt64(clients.count) }
            }
            try XCTSkipIf(firsts.get.count < 2, "64 connections all went to one ring")
            for s in clients { try s.writeAll([1]) }
            XCTAssertTrue(eventually(.seconds(10)) { closed.get == 2 }, "both closes returned")
            let targets = firsts.get
            XCTAssertTrue(eventually(.seconds(10)) { targets.values.allSatisfy { !$0.isOpen } }, "both connections closed")
        }
    }

    /// A write through a handle that has room but finds the ring's outbound buffers taken waits
    /// for them without burning a CPU (it used to spin on `Task.yield()`).
    func testAWriteWaitingForOutboundBuffersDoesNotSpin() throws {
        var c = config(.pooled, .bufferRing)
        c.outboundBuffers = 16
        let handles = Locked<[ConnectionHandle]>([])
        try withServer(c, handler: { HandleGiver(handles: handles) }) { server, port in
            let s = try nonReadingClient(port: port)
            defer { s.reset() }
            XCTAssertTrue(eventually { handles.get.count == 1 })
            let handle = handles.get[0]
            let written = Locked(0)
            let writer = Task {
                let block = [UInt8](repeating: 2, count: 4096)
                while await handle.write(block) == .queued { written.with { $0 += 1 } }
            }
            defer { writer.cancel() }
            // Until the writes stop: the peer's window and the outbound buffers are full.
            var last = -1
            XCTAssertTrue(eventually(.seconds(10)) {
                usleep(200_000)
                defer { last = written.get }
                return written.get == last
            })
            XCTAssertTrue(handle.isOpen)
            func cpuSeconds() -> Double {
                var usage = rusage()
                getrusage(RUSAGE_SELF.rawValue, &usage)
                return Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec)
                    + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
            }
            let before = cpuSeconds()
            usleep(1_000_000)
            let used = cpuSeconds() - before
            XCTAssertLessThan(used, 0.3, "CPU seconds used in one second by a write that waits")
        }
    }
}
