import EchoServer
import SocketPool
import Synchronization
import TestSupport
import URing
import XCTest

/// Heap allocations made by the ring thread itself, read from inside handler callbacks (the
/// counter is per thread, so the clients' allocations are not counted).
final class AllocationMarks: Sendable {
    let start = Atomic<UInt64>(0)
    let end = Atomic<UInt64>(0)
    let warmup: Int
    let measured: Int
    init(warmup: Int, measured: Int) {
        self.warmup = warmup
        self.measured = measured
    }
    func mark(_ count: Int) {
        if count == warmup { start.store(threadAllocations(), ordering: .relaxed) }
        if count == warmup + measured { end.store(threadAllocations(), ordering: .relaxed) }
    }
    var perEvent: Double {
        Double(end.load(ordering: .relaxed) &- start.load(ordering: .relaxed)) / Double(measured)
    }
}

/// The load every allocation count here is taken under: `messages.warmup + messages.measured`
/// ping-pongs of 64 bytes on one connection, then `connections` connections that each send
/// `each` (the ping-pong's payload when nil), read it back and close.
func driveAllocationLoad(
    port: UInt16, seed: UInt64, messages: AllocationMarks, connections: Int, each: [UInt8]? = nil,
    file: StaticString = #filePath, line: UInt = #line
) throws {
    let payload = patternBytes(seed: seed, count: 64)
    let s = try TestSocket.connect(port: port)
    s.setTimeout(seconds: 5)
    for _ in 0..<(messages.warmup + messages.measured) {
        try s.writeAll(payload)
        XCTAssertEqual(try s.readExactly(64), payload, file: file, line: line)
    }
    s.close()
    let each = each ?? payload
    for i in 0..<connections {
        XCTAssertEqual(try ServerTestCase.roundTrip(port: port, each), each, "connection \(i)", file: file, line: line)
    }
}

/// Echo in place, or echo through ``Connection/write(_:)`` (a copy into pooled outbound buffers),
/// marking messages and closes.
struct MarkingHandler: ConnectionHandler {
    let messages: AllocationMarks
    let closes: AllocationMarks
    let viaWrite: Bool
    var messageCount = 0
    var closeCount = 0

    mutating func received(_ bytes: UnsafeMutableRawBufferPointer, connection: Connection) -> Reply {
        messageCount += 1
        messages.mark(messageCount)
        if viaWrite {
            XCTAssertEqual(connection.write(UnsafeRawBufferPointer(bytes)), .queued)
            return .nothing
        }
        return .send(bytes.count)
    }

    mutating func closed(_ connection: ConnectionID) {
        closeCount += 1
        closes.mark(closeCount)
    }
}

final class AllocationTests: ServerTestCase {
    override func setUpWithError() throws {
        try super.setUpWithError()
        try XCTSkipUnless(allocationCounterAvailable, "the malloc counter is left out under sanitizers")
    }

    /// Allocations of the ring thread per message (one connection, 64-byte ping-pong) and per
    /// connection (accept, echo 64 bytes, close), after warm-up, on the real loop.
    func measure(
        _ mode: PoolMode, _ receive: ReceiveStrategy, viaWrite: Bool, incremental: Bool = false
    ) throws -> (perMessage: Double, perConnection: Double) {
        let messages = AllocationMarks(warmup: 200, measured: 2000)
        let closes = AllocationMarks(warmup: 100, measured: 1000)
        var c = config(mode, receive)
        c.maxConnections = 8
        if incremental { c.features.insert(.incrementalBuffers) }
        try withServer(c, handler: { MarkingHandler(messages: messages, closes: closes, viaWrite: viaWrite) }) { server, port in
            if incremental {
                try XCTSkipUnless(
                    server.statistics.features.contains(.incrementalBuffers), "this kernel refuses IOU_PBUF_RING_INC")
            }
            try driveAllocationLoad(port: port, seed: 7, messages: messages, connections: closes.warmup + closes.measured)
            XCTAssertTrue(eventually { server.statistics.closed == UInt64(closes.warmup + closes.measured + 1) })
        }
        return (messages.perEvent, closes.perEvent)
    }

    /// The receive paths: per-session buffers, the ordinary buffer ring, the incremental one (an
    /// io_uring feature: not on the epoll pass).
    static let receivePaths: [(ReceiveStrategy, incremental: Bool)] = [
        (.perSessionBuffer, false), (.bufferRing, false), (.bufferRing, true),
    ].filter { testDriver == .ioUring || !$0.1 }

    func testEchoAndWriteAllocateNothingPerMessageOrConnectionWhenPooled() throws {
        for (receive, incremental) in Self.receivePaths {
            for viaWrite in [false, true] {
                let (perMessage, perConnection) = try measure(
                    .pooled, receive, viaWrite: viaWrite, incremental: incremental)
                let label = "pooled/\(receive)\(incremental ? "/incremental" : "")/\(viaWrite ? "write" : "in place")"
                print("allocations \(label): \(perMessage) per message, \(perConnection) per connection")
                XCTAssertEqual(perMessage, 0, "\(label): zero heap allocations per message")
                XCTAssertEqual(perConnection, 0, "\(label): zero heap allocations per connection")
            }
        }
    }

    func testUnpooledAllocatesItsSessionPerConnectionAndNothingPerMessage() throws {
        for (receive, incremental) in Self.receivePaths {
            let (perMessage, perConnection) = try measure(.unpooled, receive, viaWrite: false, incremental: incremental)
            let label = "unpooled/\(receive)\(incremental ? "/incremental" : "")"
            print("allocations \(label): \(perMessage) per message, \(perConnection) per connection")
            XCTAssertEqual(perMessage, 0, "\(label): nothing per message")
            // A session per connection, and with per-session receive its buffer too.
            // (On epoll every connection reads into the ring's pool: a session alone.)
            XCTAssertGreaterThanOrEqual(perConnection, receive == .bufferRing || testDriver == .epoll ? 0.99 : 1.99, label)
        }
    }

    /// A proxy's ring thread, per relayed message (a 64-byte ping-pong through the proxy to an
    /// echo server and back: each message crosses the proxy twice) and per proxied connection
    /// (accept, the upstream connect, one exchange, both closes), pooled, after warm-up.
    func testAProxyAllocatesNothingPerRelayedMessageOrPerProxiedConnectionWhenPooled() throws {
        struct MarkingProxy: ConnectionHandler {
            static var pausesReceivingForQueuedOutput: Bool { false }
            var proxy: TCPProxy
            let messages: AllocationMarks
            let connections: AllocationMarks
            var messageCount = 0
            var connectionCount = 0
            mutating func start(capacity: Int) { proxy.start(capacity: capacity) }
            mutating func opened(_ connection: Connection) {
                if !connection.isOutbound {
                    connectionCount += 1
                    connections.mark(connectionCount)
                }
                proxy.opened(connection)
            }
            mutating func received(_ bytes: UnsafeMutableRawBufferPointer, connection: Connection) -> Reply {
                if !connection.isOutbound && bytes.count == 64 {
                    messageCount += 1
                    messages.mark(messageCount)
                }
                return proxy.received(bytes, connection: connection)
            }
            mutating func writable(_ connection: Connection) { proxy.writable(connection) }
            mutating func inputEnded(_ connection: Connection) { proxy.inputEnded(connection) }
            mutating func closed(_ connection: ConnectionID, end: ConnectionEnd, ring: RingContext) {
                proxy.closed(connection, end: end, ring: ring)
            }
            mutating func connectFailed(_ connection: ConnectionID, _ failure: ConnectFailure, ring: RingContext) {
                proxy.connectFailed(connection, failure, ring: ring)
            }
        }
        let upstream = Server(configuration: config(.pooled, .bufferRing))
        try upstream.start()
        defer {
            upstream.stop()
            upstream.wait()
        }
        let address = try XCTUnwrap(upstream.boundAddress)
        for receive in [ReceiveStrategy.bufferRing, .perSessionBuffer] {
            let messages = AllocationMarks(warmup: 200, measured: 2000)
            let connections = AllocationMarks(warmup: 100, measured: 500)
            var c = config(.pooled, receive)
            c.maxConnections = 8
            c.maxOutboundConnections = 8
            try withServer(c, handler: {
                MarkingProxy(proxy: TCPProxy(upstream: address), messages: messages, connections: connections)
            }) { server, port in
                try driveAllocationLoad(
                    port: port, seed: 9, messages: messages, connections: connections.warmup + connections.measured + 1,
                    each: [1, 2, 3])
                XCTAssertTrue(eventually { server.statistics.outboundActive == 0 && server.statistics.active == 0 })
            }
            print("allocations proxy/pooled/\(receive): \(messages.perEvent) per relayed message, \(connections.perEvent) per proxied connection")
            XCTAssertEqual(messages.perEvent, 0, "\(receive): zero per relayed message")
            XCTAssertEqual(connections.perEvent, 0, "\(receive): zero per proxied connection")
        }
    }
}
