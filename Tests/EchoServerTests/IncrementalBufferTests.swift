import EchoServer
import Foundation
import Glibc
import SocketPool
import TestSupport
import URing
import XCTest

/// Writes `preamble` bytes to each connection as it opens, then echoes in place: a client that
/// does not read yet keeps each later reply queued behind the preamble, holding its receive's
/// slice of the buffer ring.
struct PreambleHandler: ConnectionHandler {
    let preamble: [UInt8]

    mutating func opened(_ connection: Connection) {
        XCTAssertEqual(connection.write(preamble), .queued)
    }

    mutating func received(_ bytes: UnsafeMutableRawBufferPointer, connection: Connection) -> Reply {
        .send(bytes.count)
    }
}

/// Incremental buffer consumption (`IOU_PBUF_RING_INC`, Linux 6.12): receives share the buffers
/// of a ring of few large buffers; echo stays byte-exact; more receives than buffers can be held
/// at once; and where the kernel refuses the ring, or it is switched off, the ordinary ring serves.
final class IncrementalBufferTests: ServerTestCase {
    override func setUpWithError() throws {
        try super.setUpWithError()
        try requireKernel(.bufferRing)
    }

    /// Skips unless this kernel registers an incremental ring (Linux 6.12).
    func requireIncrementalBuffers() throws {
        let ring = try Ring()
        do {
            var probe = try BufferRing(registeringWith: ring, group: 1, count: 2, bufferSize: 64, flags: .incremental)
            try probe.unregister(from: ring)
        } catch {
            throw XCTSkip("this kernel (\(Sockets.kernelRelease)) refuses IOU_PBUF_RING_INC: \(error)")
        }
    }

    /// Many connections at once, each sending many messages of varying sizes one at a time and
    /// then a pipelined burst, every byte checked; 1 MiB with a half-close; a reset.
    func exerciseEcho(_ c: ServerConfiguration, _ label: String) throws {
        try withServer(c) { server, port in
            let features = server.statistics.features
            XCTAssertTrue(features.contains(.incrementalBuffers), "\(label): \(features)")
            let ok = Locked(0)
            parallel(8) { t in
                do {
                    let s = try TestSocket.connect(port: port)
                    defer { s.close() }
                    for i in 0..<150 {
                        let bytes = patternBytes(seed: UInt64(t * 1000 + i), count: 1 + (i * 397 + t * 31) % 9000)
                        try s.writeAll(bytes)
                        guard try s.readExactly(bytes.count) == bytes else { return }
                    }
                    // Pipelined: 40 messages written back to back, then read back as one stream.
                    var burst: [UInt8] = []
                    for i in 0..<40 { burst += patternBytes(seed: UInt64(t * 77 + i), count: 1 + i * 13) }
                    try s.writeAll(burst)
                    guard try s.readExactly(burst.count) == burst else { return }
                    ok.with { $0 += 1 }
                } catch {
                    XCTFail("\(label): client \(t): \(error)")
                }
            }
            XCTAssertEqual(ok.get, 8, "\(label): every connection echoed byte-exact")
            let big = patternBytes(seed: 12, count: 1 << 20)
            XCTAssertTrue(try Self.roundTrip(port: port, big) == big, "\(label): 1 MiB, then the half-close")
            let s = try TestSocket.connect(port: port)
            try s.writeAll(patternBytes(seed: 5, count: 50_000))
            s.reset()
            XCTAssertTrue(eventually { server.statistics.closed == 10 && server.statistics.active == 0 }, label)
        }
    }

    func testEchoIsByteExactOverIncrementalBuffersPooledAndUnpooled() throws {
        try requireIncrementalBuffers()
        for mode in PoolMode.allCases {
            // The defaults: 256 buffers of 64 KiB.
            try exerciseEcho(configINC(mode, .bufferRing), "\(mode)/default ring")
            // Two buffers of 32 KiB: every buffer serves many receives, comes back often, and the
            // ring runs dry (ENOBUFS) while connections hold slices of it.
            var small = configINC(mode, .bufferRing)
            small.bufferRingEntries = 16
            XCTAssertEqual(small.incrementalRing.count, 2)
            XCTAssertEqual(small.incrementalRing.bufferSize, 32 << 10)
            try exerciseEcho(small, "\(mode)/two-buffer ring")
        }
    }

    /// 200 connections each hold a received message (its reply is queued behind output the
    /// client does not read yet) in a ring of 8 buffers: 200 receives held at once, sharing the
    /// buffers. With the ordinary ring of 8 buffers, at most 8 can be held. Once the clients
    /// read, everything is echoed and every slice and buffer comes back.
    func testMoreReceivesThanBuffersAreHeldAtOnce() throws {
        try requireIncrementalBuffers()
        let clients = 200
        // Over a quarter of an outbound buffer, so the reply is not copied behind the preamble
        // (small replies are) but queued in place, holding its slice; and a divisor of the ring's
        // buffer size, so no message is split across two buffers (into two small replies).
        let message = 512
        let preamble = patternBytes(seed: 99, count: 128 << 10)
        for incremental in [true, false] {
            var c = configINC(.pooled, .bufferRing)
            c.maxConnections = 256
            c.bufferSize = 1024
            c.maxPendingBytesPerConnection = 1 << 20
            c.outboundBuffers = clients * preamble.count / c.bufferSize + 1024
            if incremental {
                c.bufferRingEntries = 128
                c.incrementalBufferSize = 16 << 10
                XCTAssertEqual(c.incrementalRing.count, 8)
                XCTAssertEqual(c.incrementalRing.bufferSize, 16 << 10)
            } else {
                c.bufferRingEntries = 8
                c.features.remove(.incrementalBuffers)
            }
            let label = incremental ? "incremental" : "ordinary"
            try withServer(c, handler: { PreambleHandler(preamble: preamble) }) { server, port in
                XCTAssertEqual(server.statistics.features.contains(.incrementalBuffers), incremental, label)
                // Small segments and a tiny receive buffer: the server's socket buffer for each
                // client holds a few tens of KiB, so the 128 KiB preamble stays queued.
                let sockets = try (0..<clients).map { _ in
                    let s = try TestSocket.unconnected()
                    var one: Int32 = 1
                    setsockopt(s.fd, SOL_SOCKET, SO_RCVBUF, &one, socklen_t(MemoryLayout<Int32>.size))
                    var segment: Int32 = 536
                    setsockopt(s.fd, Int32(IPPROTO_TCP), TCP_MAXSEG, &segment, socklen_t(MemoryLayout<Int32>.size))
                    try s.connect(port: port)
                    return s
                }
                defer { sockets.forEach { $0.close() } }
                XCTAssertTrue(eventually { server.statistics.active == clients }, label)
                for (i, s) in sockets.enumerated() { try s.writeAll(patternBytes(seed: UInt64(i), count: message)) }
                if incremental {
                    XCTAssertTrue(
                        eventually { server.statistics.buffersHeld == clients },
                        "every connection holds its message: \(server.statistics.buffersHeld) of \(clients)")
                    XCTAssertEqual(server.statistics.bufferShortages, 0, "200 messages fit in 8 buffers of 16 KiB")
                } else {
                    XCTAssertTrue(eventually { server.statistics.buffersHeld == 8 }, "\(server.statistics.buffersHeld)")
                    usleep(100_000)
                    XCTAssertEqual(server.statistics.buffersHeld, 8, "one buffer per message: the ring is full")
                    XCTAssertTrue(eventually { server.statistics.bufferShortages > 0 }, "the rest wait for buffers")
                }
                // The clients read: preamble then their echo, byte-exact.
                let ok = Locked(0)
                parallel(8) { t in
                    for i in stride(from: t, to: clients, by: 8) {
                        let s = sockets[i]
                        let expected = preamble + patternBytes(seed: UInt64(i), count: message)
                        if (try? s.readExactly(expected.count)) == expected { ok.with { $0 += 1 } }
                    }
                }
                XCTAssertEqual(ok.get, clients, "\(label): every client got its preamble and its echo")
                XCTAssertTrue(eventually { server.statistics.buffersHeld == 0 }, "\(label): every slice given back")
            }
        }
    }

    /// A kernel that refuses the incremental ring (as one older than 6.12 refuses
    /// `IOU_PBUF_RING_INC` with EINVAL; here the registration carries a flag no kernel knows)
    /// gets the ordinary ring: the feature is dropped and the server serves.
    func testRefusedRegistrationFallsBackToTheOrdinaryRing() throws {
        for mode in PoolMode.allCases {
            let server = Server(configuration: configINC(mode, .bufferRing))
            var faults = FaultInjection()
            faults.refuseIncrementalBufferRing = true
            server.inject(faults)
            try server.start()
            defer {
                server.stop()
                server.wait()
            }
            let f = server.statistics.features
            XCTAssertTrue(f.contains(.bufferRing), "\(mode): the ordinary ring registered: \(f)")
            XCTAssertFalse(f.contains(.incrementalBuffers), "\(mode): \(f)")
            let port = server.boundAddress!.port
            let bytes = patternBytes(seed: 6, count: 1 << 20)
            XCTAssertTrue(try Self.roundTrip(port: port, bytes) == bytes, "\(mode)")
        }
        // Without the buffer ring there is nothing to consume incrementally.
        var c = configINC(.pooled, .bufferRing)
        c.features.remove(.bufferRing)
        try withServer(c) { server, _ in
            XCTAssertFalse(server.statistics.features.contains(.incrementalBuffers))
        }
        try withServer(configINC(.pooled, .perSessionBuffer)) { server, _ in
            XCTAssertFalse(server.statistics.features.contains(.incrementalBuffers))
        }
    }

    /// The listening line lists `incrementalBuffers` with `--enable incremental-buffers` when the
    /// ring registered, and not by default (it is opt-in) or with it disabled again.
    func testTheListeningLineListsTheFeatureOnlyWhenInUse() throws {
        try requireIncrementalBuffers()
        let binary = try XCTUnwrap(uringEchoBinary(), "uring-echo must be built next to the tests")
        for (arguments, listed) in [
            (["--port", "0", "--enable", "incremental-buffers"], true), (["--port", "0"], false),
            (["--port", "0", "--enable", "incremental-buffers", "--disable", "incremental-buffers"], false),
        ] {
            let (process, _, firstLine) = try launchServer(binary, arguments)
            defer {
                if process.isRunning { kill(process.processIdentifier, SIGTERM) }
                XCTAssertTrue(waitForExit(process))
            }
            let line = firstLine.split(separator: "\n").first.map(String.init) ?? ""
            XCTAssertTrue(line.contains("features="), line)
            XCTAssertEqual(line.contains("incrementalBuffers"), listed, line)
            XCTAssertTrue(line.contains("bufferRing"), line)
        }
    }

    /// The incremental ring never takes more memory than the ordinary one, and a receive can
    /// always take at least `bufferSize` bytes.
    func testTheIncrementalRingsShape() {
        var c = ServerConfiguration()
        XCTAssertEqual(c.incrementalRing.count, 256, "16 MiB in 64 KiB buffers")
        XCTAssertEqual(c.incrementalRing.bufferSize, 64 << 10)
        c.bufferRingEntries = 2
        c.bufferSize = 64
        XCTAssertEqual(c.incrementalRing.count, 2, "fewer than two fit: two halves")
        XCTAssertEqual(c.incrementalRing.bufferSize, 64)
        c.bufferSize = 1 << 20
        c.bufferRingEntries = 8
        XCTAssertEqual(c.incrementalRing.bufferSize, 1 << 20, "never smaller than bufferSize")
        XCTAssertEqual(c.incrementalRing.count, 8)
        for entries in [2, 4, 64, 4096, 32768] {
            for size in [64, 1000, 4096, 65536] {
                for incremental in [64, 4096, 65536, 1 << 24] {
                    c.bufferRingEntries = entries
                    c.bufferSize = size
                    c.incrementalBufferSize = incremental
                    let shape = c.incrementalRing
                    XCTAssertLessThanOrEqual(shape.count * shape.bufferSize, entries * size)
                    XCTAssertGreaterThanOrEqual(shape.bufferSize, size)
                    XCTAssertGreaterThanOrEqual(shape.count, 2)
                    XCTAssertLessThanOrEqual(shape.count, 32768)
                    XCTAssertEqual(shape.count.nonzeroBitCount, 1)
                }
            }
        }
    }

    /// Incremental buffers are opt-in: the test configuration with them asked for.
    func configINC(_ mode: PoolMode, _ receive: ReceiveStrategy) -> ServerConfiguration {
        var c = config(mode, receive)
        c.features.insert(.incrementalBuffers)
        return c
    }
}
