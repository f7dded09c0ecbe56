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
        _ configuration: ServerConfiguration, _ receiver: (LoopCore, consuming BufferRing?) -> R
    ) throws -> CompletionLoop<EchoHandler, R> {
        let mailboxes = Mailboxes(count: 1, capacity: 4096, wakeDescriptors: [wake])
        var setup = try RingSetup(configuration, ring: 0, logger: Logger(label: "test"))
        let buffers = setup.buffers.take()
        let core = LoopCore(
            configuration: configuration, setup: setup, providedBase: buffers?.buffer(0).baseAddress, ringIndex: 0,
            mailboxes: mailboxes, logger: Logger(label: "test"))
        return CompletionLoop(
            core: core, handler: EchoHandler(), receiver: receiver(core, buffers), listener: -1, publish: { _, _ in })
    }

    /// Harvests until `condition` holds (bounded).
    func pump<R: ReceivePath & ~Copyable>(_ loop: CompletionLoop<EchoHandler, R>, until condition: () -> Bool) throws {
        for _ in 0..<100 where !condition() {
            try loop.core.ring.submitAndWait(1, timeout: .milliseconds(50))
            try loop.core.ring.forEachCompletion { (c: Completion) throws(URingError) in try loop.dispatch(c) }
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
            let handle = try XCTUnwrap(core.sessions.acquire(file: .fd(ours.fd)))
            let s = try XCTUnwrap(core.sessions.resolve(handle))
            // Closing, with its receive and the cancel of that receive in flight.
            s.pointee.state = .closing
            s.pointee.pending = [.recv, .cancelRecv]
            // The cancel's completion comes first, then the receive ends (EOF, or a reset).
            try loop.dispatch(Completion(tag: s.pointee.tag(.cancel).rawValue, result: -ENOENT, flags: 0))
            XCTAssertEqual(s.pointee.pending, [.recv])
            try loop.dispatch(Completion(tag: s.pointee.tag(.recv).rawValue, result: ending, flags: 0))
            XCTAssertEqual(s.pointee.pending, [.close], "result \(ending): the close was posted")
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
        let stale = RequestTag(index: 0, generation: 5, kind: .recv)
        let flags: UInt32 = 1 | 7 << 16  // IORING_CQE_F_BUFFER, buffer id 7 (IORING_CQE_BUFFER_SHIFT is 16)
        try loop.dispatch(Completion(tag: stale.rawValue, result: 100, flags: flags))
        XCTAssertEqual(loop.core.stats.staleCompletions, 1)
        XCTAssertEqual(loop.receiver.buffers.returnedSinceCommit, 1, "the buffer went back to the ring")
        XCTAssertEqual(loop.receiver.buffersHeld, 0, "the books balance: nothing counted held, nothing twice")
    }
}
