import EchoServer
import Foundation
import Glibc
import SocketPool
import TestSupport
import URing
import XCTest

/// Greets on open; answers every read with `OK <n>\n` (a reply that is not a prefix of the request).
struct GreetAndCount: ConnectionHandler {
    mutating func opened(_ connection: Connection) {
        XCTAssertEqual(connection.write("hello\n"), .queued)
    }

    mutating func received(_ bytes: UnsafeMutableRawBufferPointer, connection: Connection) -> Reply {
        XCTAssertEqual(connection.write("OK \(bytes.count)\n"), .queued)
        return .nothing
    }
}

/// Echoes in place and writes `!` in the same call: the `!` must come after the echoed bytes.
struct EchoThenBang: ConnectionHandler {
    mutating func received(_ bytes: UnsafeMutableRawBufferPointer, connection: Connection) -> Reply {
        XCTAssertEqual(connection.write("!"), .queued)
        return .send(bytes.count)
    }
}

/// Commands: `sub` subscribes, `pub X` writes X to the subscriber (by ID), `close`/`abort`.
final class Relay: Sendable {
    let subscriber = Locked<ConnectionID?>(nil)
    let results = Locked<[WriteResult]>([])
    let writableCalls = Locked(0)
    let refusedBytes = Locked(0)
}

struct RelayHandler: ConnectionHandler {
    let relay: Relay

    mutating func received(_ bytes: UnsafeMutableRawBufferPointer, connection: Connection) -> Reply {
        let text = String(decoding: bytes, as: UTF8.self)
        if text.hasPrefix("sub") {
            relay.subscriber.with { $0 = connection.id }
            connection.write("subscribed\n")
        } else if text.hasPrefix("pub ") {
            let target = relay.subscriber.get!
            let result = text.dropFirst(4).utf8.withContiguousStorageIfAvailable {
                connection.ring.write(UnsafeRawBufferPointer($0), to: target)
            } ?? connection.ring.write(UnsafeRawBufferPointer(start: nil, count: 0), to: target)
            relay.results.with { $0.append(result) }
            connection.write("\(result)\n")
        } else if text.hasPrefix("close") {
            connection.write("bye\n")
            connection.close()
        } else if text.hasPrefix("abort") {
            connection.write([UInt8](repeating: 1, count: 1 << 20))
            connection.abort()
        }
        return .nothing
    }
}

/// On open, streams `total` pattern bytes through write, refilling on `writable` after each refusal.
struct Streamer: ConnectionHandler {
    let relay: Relay
    let total: Int
    var sent: [Int] = []
    static let pattern = patternBytes(seed: 99, count: 1 << 16)

    mutating func start(capacity: Int) { sent = Array(repeating: 0, count: capacity) }
    mutating func opened(_ connection: Connection) {
        sent[connection.index] = 0
        fill(connection)
    }
    mutating func writable(_ connection: Connection) {
        relay.writableCalls.with { $0 += 1 }
        fill(connection)
    }
    mutating func received(_ bytes: UnsafeMutableRawBufferPointer, connection: Connection) -> Reply { .nothing }

    mutating func fill(_ connection: Connection) {
        while sent[connection.index] < total {
            let chunk = min(16_384, total - sent[connection.index])
            let offset = sent[connection.index] % Self.pattern.count
            let n = min(chunk, Self.pattern.count - offset)
            let result = Self.pattern.withUnsafeBytes { connection.write(UnsafeRawBufferPointer(rebasing: $0[offset..<offset + n])) }
            if result != .queued {
                relay.results.with { $0.append(result) }
                return
            }
            sent[connection.index] += n
        }
        connection.close()
    }
}

/// Sends each read on a trip through another ring and back: ring r posts it to ring r+1 with the
/// origin connection's index in the value and its generation ahead of the bytes; that ring posts
/// it back; the origin ring writes it out.
struct RingTrip: ConnectionHandler {
    let relay: Relay

    mutating func received(_ bytes: UnsafeMutableRawBufferPointer, connection: Connection) -> Reply {
        let ring = connection.ring
        var message = withUnsafeBytes(of: connection.id.epoch) { Array($0) }
        message += bytes
        let result = message.withUnsafeBytes {
            ring.post($0, value: UInt64(connection.id.index) | 1 << 63, toRing: (ring.index + 1) % ring.count)
        }
        XCTAssertEqual(result, .posted)
        return .nothing
    }

    mutating func received(message: RingMessage, ring: RingContext) {
        if message.value & 1 << 63 != 0 {
            XCTAssertEqual(ring.post(message.bytes, value: message.value & ~(1 << 63), toRing: message.from), .posted)
        } else {
            let generation = message.bytes.loadUnaligned(as: UInt64.self)
            let id = ConnectionID(ring: ring.index, index: Int(message.value), epoch: generation)
            XCTAssertEqual(ring.write(UnsafeRawBufferPointer(rebasing: message.bytes[8...]), to: id), .queued)
        }
    }
}

/// Posts `count` 1 KiB messages to the next ring in one call and reports how many were refused.
struct Flooder: ConnectionHandler {
    let relay: Relay
    mutating func received(_ bytes: UnsafeMutableRawBufferPointer, connection: Connection) -> Reply {
        let message = [UInt8](repeating: 7, count: 1024)
        var posted = 0
        var full = 0
        for _ in 0..<50 {
            let r = message.withUnsafeBytes {
                connection.ring.post($0, toRing: (connection.ring.index + 1) % connection.ring.count)
            }
            if r == .posted { posted += 1 } else if r == .full { full += 1 }
        }
        XCTAssertEqual(
            connection.ring.post(UnsafeRawBufferPointer(start: nil, count: 0), toRing: 99), .noSuchRing)
        connection.write("posted \(posted) full \(full)\n")
        return .nothing
    }
}

/// The first connection to say `sink` receives every byte the others send (written, not in place).
/// With flow control, a source stops receiving while the sink has more than 256 KiB queued, and
/// resumes when the sink drains.
struct Funnel: ConnectionHandler {
    let relay: Relay
    let flowControl: Bool
    var paused: [ConnectionID] = []

    mutating func received(_ bytes: UnsafeMutableRawBufferPointer, connection: Connection) -> Reply {
        guard let sink = relay.subscriber.get else {
            relay.subscriber.with { $0 = connection.id }
            return .nothing
        }
        let result = connection.ring.write(UnsafeRawBufferPointer(bytes), to: sink)
        if result != .queued {
            relay.results.with { $0.append(result) }
            relay.refusedBytes.with { $0 += bytes.count }
        }
        if flowControl && (connection.ring.queuedBytes(sink) ?? 0) > 256 << 10 {
            connection.ring.pauseReceiving(connection.id)
            paused.append(connection.id)
        }
        return .nothing
    }

    mutating func writable(_ connection: Connection) {
        relay.writableCalls.with { $0 += 1 }
        for id in paused { connection.ring.resumeReceiving(id) }
        paused.removeAll(keepingCapacity: true)
    }
}

final class ConnectionAPITests: ServerTestCase {
    func readLine(_ s: TestSocket) throws -> String {
        var line: [UInt8] = []
        while line.last != UInt8(ascii: "\n") { line += try s.readExactly(1) }
        return String(decoding: line, as: UTF8.self)
    }

    func testGreetingOnOpenAndARepliesLongerThanTheRequest() throws {
        for (mode, receive) in Self.variants {
            try withServer(config(mode, receive), handler: { GreetAndCount() }) { _, port in
                let s = try TestSocket.connect(port: port)
                defer { s.close() }
                s.setTimeout(seconds: 5)
                XCTAssertEqual(try readLine(s), "hello\n", "\(mode)/\(receive): greeted before sending anything")
                try s.writeAll(Array("ab".utf8))
                XCTAssertEqual(try readLine(s), "OK 2\n", "\(mode)/\(receive): a 2-byte request gets a 5-byte answer")
                try s.writeAll([UInt8](repeating: 0, count: 1))
                XCTAssertEqual(try readLine(s), "OK 1\n")
            }
        }
    }

    func testInPlaceReplyGoesBeforeWhatTheSameCallWrites() throws {
        for (mode, receive) in Self.variants {
            try withServer(config(mode, receive), handler: { EchoThenBang() }) { _, port in
                let s = try TestSocket.connect(port: port)
                defer { s.close() }
                s.setTimeout(seconds: 5)
                for word in ["one", "two", "three"] {
                    try s.writeAll(Array(word.utf8))
                    XCTAssertEqual(String(decoding: try s.readExactly(word.count + 1), as: UTF8.self), word + "!")
                }
            }
        }
    }

    func testWriteToAnotherConnectionAndAStaleIDIsRefused() throws {
        for (mode, receive) in Self.variants {
            let relay = Relay()
            var c = config(mode, receive)
            c.maxConnections = 2  // the subscriber's index is reused at once
            try withServer(c, handler: { RelayHandler(relay: relay) }) { server, port in
                let sub = try TestSocket.connect(port: port)
                sub.setTimeout(seconds: 5)
                try sub.writeAll(Array("sub".utf8))
                XCTAssertEqual(try readLine(sub), "subscribed\n")
                let pub = try TestSocket.connect(port: port)
                pub.setTimeout(seconds: 5)
                try pub.writeAll(Array("pub news\n".utf8))
                XCTAssertEqual(try readLine(pub), "queued\n")
                XCTAssertEqual(try readLine(sub), "news\n", "\(mode)/\(receive): written to the other connection")
                // The subscriber leaves; a new connection takes its index.
                sub.close()
                XCTAssertTrue(eventually { server.statistics.closed == 1 })
                let newcomer = try TestSocket.connect(port: port)
                newcomer.setTimeout(seconds: 1)
                try pub.writeAll(Array("pub stale\n".utf8))
                XCTAssertEqual(try readLine(pub), "closed\n", "\(mode)/\(receive): a stale ID is refused")
                XCTAssertThrowsError(try newcomer.readExactly(1), "the index's new owner gets nothing")
                newcomer.close()
                pub.close()
            }
        }
    }

    func testCloseSendsQueuedOutputThenEOFAndAbortEndsAtOnce() throws {
        for (mode, receive) in Self.variants {
            let relay = Relay()
            try withServer(config(mode, receive), handler: { RelayHandler(relay: relay) }) { server, port in
                let s = try TestSocket.connect(port: port)
                s.setTimeout(seconds: 5)
                try s.writeAll(Array("close".utf8))
                XCTAssertEqual(try s.readToEnd(), Array("bye\n".utf8), "\(mode)/\(receive): output, then EOF")
                s.close()
                let a = try TestSocket.connect(port: port)
                a.setTimeout(seconds: 5)
                try a.writeAll(Array("abort".utf8))
                let got = (try? a.readToEnd()) ?? []
                XCTAssertLessThan(got.count, 1 << 20, "\(mode)/\(receive): abort dropped queued output")
                a.close()
                XCTAssertTrue(eventually { server.statistics.closed == 2 })
            }
        }
    }

    func testWritableFollowsARefusalAndEveryByteArrivesInOrder() throws {
        let total = 2 << 20
        for (mode, receive) in Self.variants {
            let relay = Relay()
            var c = config(mode, receive)
            c.maxOutputBytesPerConnection = 64 << 10
            try withServer(c, handler: { Streamer(relay: relay, total: total) }) { server, port in
                let s = try TestSocket.connect(port: port)
                s.setTimeout(seconds: 10)
                usleep(100_000)  // let the queue fill to its bound before reading
                let got = try s.readToEnd()
                s.close()
                XCTAssertEqual(got.count, total, "\(mode)/\(receive)")
                var expected: [UInt8] = []
                while expected.count < total { expected += Streamer.pattern }
                XCTAssertTrue(got == Array(expected.prefix(total)), "\(mode)/\(receive): bytes in order")
                XCTAssertTrue(relay.results.get.allSatisfy { $0 == .full })
                XCTAssertGreaterThan(relay.results.get.count, 0, "the bound refused writes")
                XCTAssertGreaterThan(relay.writableCalls.get, 0, "writable was called after the refusals")
                XCTAssertGreaterThan(server.statistics.writesRefused, 0)
            }
        }
    }

    func testARelayWithFlowControlLosesNothingAndWithoutItRefusesNotDrops() throws {
        // One source bursts 16 MiB at once, relayed to a sink whose reader is slower than the
        // server reads. With pauseReceiving/resumeReceiving every byte arrives; without, writes
        // past the sink's bound are refused (reported to the handler and counted), never silently lost.
        let total = 16 << 20
        let block = patternBytes(seed: 5, count: total)
        let variants = Self.variants.map { ($0.0, $0.1, true) } + [(PoolMode.pooled, ReceiveStrategy.bufferRing, false)]
        for (mode, receive, flowControl) in variants {
            let relay = Relay()
            let label = "\(mode)/\(receive)/\(flowControl ? "flow control" : "none")"
            try withServer(config(mode, receive), handler: { Funnel(relay: relay, flowControl: flowControl) }) { server, port in
                let sink = try TestSocket.connect(port: port)
                defer { sink.close() }
                sink.setTimeout(seconds: 10)
                try sink.writeAll(Array("sink".utf8))
                XCTAssertTrue(eventually { relay.subscriber.get != nil })
                let source = try TestSocket.connect(port: port)
                let writer = SocketWriter(source, block)
                defer {
                    writer.stop()
                    source.close()
                }
                var got: [UInt8] = []
                got.reserveCapacity(total)
                while true {
                    if flowControl && got.count == total { break }
                    if !flowControl && server.statistics.bytesIn == UInt64(total + 4)
                        && got.count == total - relay.refusedBytes.get
                    {
                        break
                    }
                    guard let chunk = try? sink.readSome() else { break }
                    got += chunk
                    usleep(2_000)  // a reader slower than the server
                }
                if flowControl {
                    XCTAssertTrue(got == block, "\(label): every byte, in order")
                    XCTAssertEqual(relay.results.get, [], "\(label): no write was refused")
                    XCTAssertGreaterThan(relay.writableCalls.get, 0, "\(label): the source was paused and resumed")
                } else {
                    XCTAssertGreaterThan(relay.results.get.count, 0, "\(label): writes past the bound were refused")
                    XCTAssertTrue(relay.results.get.allSatisfy { $0 == .full })
                    XCTAssertEqual(got.count + relay.refusedBytes.get, total, "\(label): queued or refused, nothing lost")
                    XCTAssertTrue(eventually { server.statistics.writesRefused == UInt64(relay.results.get.count) })
                }
            }
        }
    }

    func testPostToAnotherRingAndBackKeepsOrderWithAndWithoutMessageRing() throws {
        for features in [KernelFeatures.defaults, KernelFeatures.defaults.subtracting(.messageRing)] {
            if features.contains(.messageRing), (try? requireKernel(.messageRing)) == nil {
                print("skipping the MSG_RING variant: this kernel lacks IORING_OP_MSG_RING")
                continue
            }
            let relay = Relay()
            var c = config(.pooled, .bufferRing)
            c.threads = 2
            c.features = features
            try withServer(c, handler: { RingTrip(relay: relay) }) { server, port in
                parallel(8) { i in
                    guard let s = try? TestSocket.connect(port: port) else { return XCTFail("connect") }
                    defer { s.close() }
                    s.setTimeout(seconds: 10)
                    for n in 0..<200 {
                        let line = Array("client \(i) line \(n)\n".utf8)
                        guard (try? s.writeAll(line)) != nil else { return XCTFail("write, client \(i) line \(n)") }
                        XCTAssertEqual(try? s.readExactly(line.count), line, "client \(i) line \(n)")
                    }
                }
                XCTAssertTrue(eventually { server.statistics.delivered == 2 * 8 * 200 }, "two hops per line")
                let s = server.statistics
                XCTAssertEqual(s.posted, 2 * 8 * 200)
                XCTAssertEqual(s.postsRefused, 0)
                XCTAssertEqual(s.features.contains(.messageRing), features.contains(.messageRing), "\(s.features)")
            }
        }
    }

    func testAFullMailboxIsReportedToTheSender() throws {
        try requireKernel(.messageRing)  // with the eventfd, the target may drain while the sender posts
        let relay = Relay()
        var c = config(.pooled, .bufferRing)
        c.threads = 2
        c.mailboxBytes = 4096
        try withServer(c, handler: { Flooder(relay: relay) }) { server, port in
            let s = try TestSocket.connect(port: port)
            defer { s.close() }
            s.setTimeout(seconds: 5)
            try s.writeAll([1])
            let line = try readLine(s)
            let parts = line.split(separator: " ")
            let posted = Int(parts[1])!
            let full = Int(parts[3].dropLast())!
            XCTAssertEqual(posted + full, 50)
            XCTAssertGreaterThanOrEqual(posted, 3, line)
            XCTAssertGreaterThan(full, 0, "a full mailbox is reported, not dropped silently: \(line)")
            XCTAssertTrue(eventually { server.statistics.delivered == UInt64(server.statistics.posted) })
            XCTAssertTrue(eventually { server.statistics.postsRefused == UInt64(full) })
        }
    }
}

/// Echoes, and after the peer's FIN writes how many bytes it saw, a moment later (on the next
/// message from its own ring), then closes.
struct Summarizer: ConnectionHandler {
    var seen: [Int] = []
    mutating func start(capacity: Int) { seen = Array(repeating: 0, count: capacity) }
    mutating func opened(_ connection: Connection) { seen[connection.index] = 0 }
    mutating func received(_ bytes: UnsafeMutableRawBufferPointer, connection: Connection) -> Reply {
        seen[connection.index] += bytes.count
        return .send(bytes.count)
    }
    mutating func inputEnded(_ connection: Connection) {
        // Not closed here: the connection stays open for writing after the peer's FIN.
        let id = connection.id
        withUnsafeBytes(of: UInt64(id.epoch)) {
            _ = connection.ring.post($0, value: UInt64(id.index), toRing: connection.ring.index)
        }
    }
    mutating func received(message: RingMessage, ring: RingContext) {
        let id = ConnectionID(ring: ring.index, index: Int(message.value), epoch: message.bytes.loadUnaligned(as: UInt64.self))
        let text = Array("\nseen \(seen[id.index])\n".utf8)
        XCTAssertEqual(text.withUnsafeBytes { ring.write($0, to: id) }, .queued, "writing after the peer's FIN")
        ring.close(id)
    }
}

/// Echoes; at "bye" answers "ok", shuts its output and goes on counting what comes in; at the
/// peer's FIN, records the count (the connection then closes by itself: both directions done).
struct ShutdownFirst: ConnectionHandler {
    let counts: Locked<[Int]>
    let refused: Locked<Int>
    var seen: [Int] = []
    var shut: [Bool] = []
    mutating func start(capacity: Int) {
        seen = Array(repeating: 0, count: capacity)
        shut = Array(repeating: false, count: capacity)
    }
    mutating func opened(_ connection: Connection) {
        seen[connection.index] = 0
        shut[connection.index] = false
    }
    mutating func received(_ bytes: UnsafeMutableRawBufferPointer, connection: Connection) -> Reply {
        if shut[connection.index] {
            seen[connection.index] += bytes.count
            if connection.write("late") == .closed { refused.with { $0 += 1 } }
            return .nothing
        }
        if bytes.starts(with: Array("bye".utf8)) {
            shut[connection.index] = true
            seen[connection.index] += bytes.count - 3
            connection.write("ok")
            connection.shutdownOutput()
            return .nothing
        }
        return .send(bytes.count)
    }
    mutating func inputEnded(_ connection: Connection) {
        counts.with { $0.append(seen[connection.index]) }
        // No close asked: with its output shut, the connection closes by itself.
    }
}

final class HalfCloseTests: ServerTestCase {
    /// shutdownOutput: the FIN goes after what was queued, the connection goes on receiving, later
    /// writes are refused, and it closes once the peer's FIN comes (both directions done).
    func testShutdownOutputSendsAFINAfterTheQueueAndReceivesOnUntilThePeersFIN() throws {
        for (mode, receive) in Self.variants {
            let counts = Locked<[Int]>([])
            let refused = Locked(0)
            try withServer(config(mode, receive), handler: { ShutdownFirst(counts: counts, refused: refused) }) {
                server, port in
                let s = try TestSocket.connect(port: port)
                defer { s.close() }
                s.setTimeout(seconds: 5)
                try s.writeAll(Array("hello".utf8))
                XCTAssertEqual(try s.readExactly(5), Array("hello".utf8))
                try s.writeAll(Array("bye".utf8))
                XCTAssertEqual(try s.readToEnd(), Array("ok".utf8), "\(mode)/\(receive): ok, then the server's FIN")
                // Half-closed by the server: it still reads.
                let more = patternBytes(seed: 3, count: 200_000)
                try s.writeAll(more)
                usleep(50_000)
                XCTAssertEqual(server.statistics.closed, 0, "\(mode)/\(receive): still open for input")
                s.shutdownWrite()
                XCTAssertTrue(eventually { server.statistics.closed == 1 }, "\(mode)/\(receive): closed after both FINs")
                XCTAssertEqual(counts.get, [200_000], "\(mode)/\(receive): every byte after the shutdown was received")
                XCTAssertGreaterThan(refused.get, 0, "\(mode)/\(receive): writes after the shutdown are refused")
            }
        }
    }

    func testAfterThePeersFINTheHandlerMayStillWriteThenClose() throws {
        for (mode, receive) in Self.variants {
            try withServer(config(mode, receive), handler: { Summarizer() }) { server, port in
                let s = try TestSocket.connect(port: port)
                defer { s.close() }
                s.setTimeout(seconds: 5)
                let bytes = patternBytes(seed: 9, count: 100_000)
                try s.writeAll(bytes)
                s.shutdownWrite()
                let back = try s.readToEnd()
                XCTAssertEqual(back.count, bytes.count + "\nseen 100000\n".utf8.count, "\(mode)/\(receive)")
                XCTAssertTrue(Array(back.prefix(bytes.count)) == bytes, "\(mode)/\(receive): the echo first")
                XCTAssertEqual(String(decoding: back.suffix(from: bytes.count), as: UTF8.self), "\nseen 100000\n")
                XCTAssertTrue(eventually { server.statistics.closed == 1 })
            }
        }
    }
}
