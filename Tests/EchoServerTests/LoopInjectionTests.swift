@testable import EchoServer
import Glibc
import Logging
import SocketPool
import TestSupport
import URing
import XCTest

/// Completions injected into a real loop on a real ring, for orders of events that are hard to
/// provoke over a socket: a closing connection whose last receive ends after its cancel, a late
/// completion carrying a provided buffer.
final class LoopInjectionTests: XCTestCase {
    var wake: Int32 = -1

    override func setUpWithError() throws {
        if let reason = ioUringUnavailableReason() { throw XCTSkip(reason) }
        wake = try Sockets.makeEventFD()
    }

    override func tearDown() {
        if wake >= 0 { _ = try? Sockets.close(wake) }
    }

    /// A loop that is set up but not running: the test plays its completions.
    func makeLoop<R: ReceivePath & ~Copyable>(
        _ configuration: ServerConfiguration, slices: Int? = nil, _ receiver: (URingCore, consuming BufferRing?) -> R
    ) throws -> CompletionLoop<EchoHandler, R> {
        let remote = RemoteConnections(
            capacity: configuration.maxConnections, inboxBytes: 4096, outboundBuffers: configuration.outboundBuffers,
            outboundSize: configuration.bufferSize, guaranteedBuffers: configuration.guaranteedOutboundBuffers)
        let mailboxes = Mailboxes(count: 1, capacity: 4096, wakeDescriptors: [wake], remotes: [remote])
        var setup = try RingSetup(configuration, ring: 0, logger: Logger(label: "test"))
        let buffers = setup.buffers.take()
        var provided = ProvidedSegments.none
        if let slices {
            provided = .slices(count: slices)
        } else if let base = buffers?.buffer(0).baseAddress {
            provided = .buffers(base: base, count: configuration.bufferRingEntries, size: configuration.bufferSize)
        }
        let core = try URingCore(
            configuration: configuration, setup: setup, provided: provided, ringIndex: 0, mailboxes: mailboxes,
            logger: Logger(label: "test"), listeners: RingListeners(main: -1, sides: []))
        return CompletionLoop(
            core: core, handler: EchoHandler(), receiver: receiver(core, buffers),
            listeners: RingListeners(main: -1, sides: []), publish: { _, _ in })
    }

    /// Harvests until `condition` holds (bounded).
    func pump<R: ReceivePath & ~Copyable>(_ loop: CompletionLoop<EchoHandler, R>, until condition: () -> Bool) throws {
        for _ in 0..<100 where !condition() {
            try loop.core.ring.submitAndWait(1, timeout: .milliseconds(50))
            try loop.core.ring.forEachCompletion { (c: Completion) throws(URingError) in try loop.handle(c) }
        }
    }

    func testAClosingConnectionWhoseReceiveEndsAfterItsCancelStillCloses() throws {
        var c = ServerConfiguration()
        c.receive = .perSessionBuffer
        c.maxConnections = 4
        for ending: Int32 in [0, -ECONNRESET] {
            let loop = try makeLoop(c) { core, _ in SessionBufferReceiver(sessionFirst: core.queue.sessionFirst) }
            let core = loop.core
            let (ours, theirs) = try TestSocket.pair()
            defer { theirs.close() }
            theirs.setTimeout(seconds: 2)
            let s = try XCTUnwrap(core.sessions.acquire(file: .fd(ours.fd)))
            // Closing, with its receive and the cancel of that receive in flight.
            s.pointee.lifecycle.posted(.recv)
            s.pointee.lifecycle.failed()
            XCTAssertEqual(s.pointee.lifecycle.settle(s.pointee.holdings, loop.bounds), .cancelReceive)
            // The cancel's completion comes first, then the receive ends (EOF, or a reset).
            try loop.handle(Completion(tag: s.pointee.tag(.cancelRecv), result: -ENOENT, flags: 0))
            XCTAssertEqual(s.pointee.lifecycle.pending, [.recv])
            try loop.handle(Completion(tag: s.pointee.tag(.recv), result: ending, flags: 0))
            if core.quietClose {
                XCTAssertEqual(core.sessions.statistics.inUse, 0, "result \(ending): closed, recycled once submitted")
            } else {
                XCTAssertEqual(s.pointee.lifecycle.pending, [.close], "result \(ending): the close is in flight")
            }
            try core.ring.submit()
            try pump(loop) { core.sessions.statistics.inUse == 0 }
            XCTAssertEqual(core.sessions.statistics.inUse, 0, "result \(ending): the close completed and the session is back")
            XCTAssertEqual(core.stats.closed, 1)
            var byte: UInt8 = 0
            XCTAssertEqual(recv(theirs.fd, &byte, 1, 0), 0, "the peer saw the close")
        }
    }

    func testALateCompletionCarryingAProvidedBufferGivesItBackOnce() throws {
        var c = ServerConfiguration()
        c.receive = .bufferRing
        c.bufferRingEntries = 8
        c.maxConnections = 4
        c.features.remove(.incrementalBuffers)
        // The ring's own buffer ring is swapped for one whose buffer 7 the "kernel" holds (it was
        // never provided), as if a receive had taken it.
        let loop = try makeLoop(c) { core, buffers in
            var original = buffers!
            try? original.unregister(from: core.ring)
            let held = try! BufferRing(registeringWith: core.ring, group: 2, count: 8, bufferSize: 64, provided: 7)
            return BufferRingReceiver(buffers: held, sessions: core.sessions.capacity, maxHeldPerConnection: 4)
        }
        XCTAssertEqual(loop.receiver.buffersHeld, 0)
        XCTAssertEqual(loop.receiver.buffers.returnedSinceCommit, 0)
        // A receive completion for a connection that is long gone (generation 5 of index 0, never
        // handed out), carrying buffer 7: counted stale, and the buffer goes straight back, once.
        let stale = RequestTag(Lease(index: 0, generation: 5), .recv)
        let flags: UInt32 = 1 | 7 << 16  // IORING_CQE_F_BUFFER, buffer id 7 (IORING_CQE_BUFFER_SHIFT is 16)
        try loop.handle(Completion(tag: stale.rawValue, result: 100, flags: flags))
        XCTAssertEqual(loop.core.stats.staleCompletions, 1)
        XCTAssertEqual(loop.receiver.buffers.returnedSinceCommit, 1, "the buffer went back to the ring")
        XCTAssertEqual(loop.receiver.buffersHeld, 0, "the books balance: nothing counted held, nothing twice")
    }

    /// The bookkeeping of an incremental ring, with completions played by the test: each slice
    /// starts where the previous completion for its buffer ended; a buffer goes back to the ring
    /// only when the kernel is done with it (no `BUF_MORE`, and full) and its slices are all
    /// released; a stale completion still uses up its part of the buffer.
    func testIncrementalSlicesStartWhereTheLastEndedAndTheirBufferReturnsOnce() throws {
        var c = ServerConfiguration()
        c.receive = .bufferRing
        c.bufferRingEntries = 2
        c.bufferSize = 64
        c.maxConnections = 4
        c.features.insert(.incrementalBuffers)  // opt-in
        XCTAssertTrue(c.incrementalRing == (2, 64))
        let slices = IncrementalBufferReceiver.sliceCapacity(sessions: 4, maxHeldPerConnection: 2)
        let loop = try makeLoop(c, slices: slices) { core, buffers in
            IncrementalBufferReceiver(
                buffers: buffers!, sessions: core.sessions.capacity, maxHeldPerConnection: 2, unitSize: 64,
                queue: core.queue)
        }
        try XCTSkipUnless(loop.core.features.contains(.incrementalBuffers), "this kernel refuses IOU_PBUF_RING_INC")
        let core = loop.core
        // Buffer 0 holds a known pattern, as if the kernel had written it.
        let memory = loop.receiver.buffers.buffer(0)
        for i in 0..<64 { memory[i] = UInt8(i) }
        let (ours, theirs) = try TestSocket.pair()
        defer {
            ours.close()
            theirs.close()
        }
        theirs.setTimeout(seconds: 2)
        let s = try XCTUnwrap(core.sessions.acquire(file: .fd(ours.fd)))
        s.pointee.lifecycle.posted(.recv)
        let more: UInt32 = 16  // IORING_CQE_F_BUF_MORE
        let buffer0: UInt32 = 1 | 0 << 16  // IORING_CQE_F_BUFFER, buffer id 0

        // 10 bytes, and the kernel keeps the buffer: echoed from its start.
        try loop.handle(Completion(tag: s.pointee.tag(.recv), result: 10, flags: buffer0 | more))
        XCTAssertEqual(loop.receiver.buffersHeld, 1)
        try pump(loop) { s.pointee.output.head < 0 }
        XCTAssertEqual(try theirs.readExactly(10), Array(0..<10))
        XCTAssertEqual(loop.receiver.buffersHeld, 0)
        XCTAssertEqual(loop.receiver.buffers.returnedSinceCommit, 0, "the kernel still fills buffer 0")

        // 54 more, to the buffer's end: the kernel is done with it. Echoed from offset 10; the
        // buffer goes back once the echo is sent.
        XCTAssertTrue(s.pointee.lifecycle.pending.contains(.recv), "receiving again")
        try loop.handle(Completion(tag: s.pointee.tag(.recv), result: 54, flags: buffer0))
        XCTAssertEqual(loop.receiver.free, 1, "buffer 0 is out of the kernel's hands")
        XCTAssertEqual(loop.receiver.buffers.returnedSinceCommit, 0, "not while its slice is held")
        try pump(loop) { s.pointee.output.head < 0 }
        XCTAssertEqual(try theirs.readExactly(54), Array(10..<64))
        XCTAssertEqual(loop.receiver.buffers.returnedSinceCommit, 1, "given back, once")
        XCTAssertEqual(loop.receiver.free, 2)
        XCTAssertEqual(loop.receiver.consumed[0], 0, "it starts over")

        // A stale completion that used up buffer 1: nobody reads it, and the buffer goes back.
        let stale = RequestTag(Lease(index: 1, generation: 5), .recv)
        try loop.handle(Completion(tag: stale.rawValue, result: 30, flags: 1 | 1 << 16 | more))
        XCTAssertEqual(loop.receiver.consumed[1], 30)
        try loop.handle(Completion(tag: stale.rawValue, result: 34, flags: 1 | 1 << 16))
        XCTAssertEqual(loop.receiver.buffers.returnedSinceCommit, 2)
        XCTAssertEqual(core.stats.staleCompletions, 2)
        XCTAssertEqual(loop.receiver.buffersHeld, 0, "the books balance")
        XCTAssertEqual(s.pointee.buffersHeld, 0)
    }
}
