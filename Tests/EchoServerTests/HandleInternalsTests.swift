@testable import EchoServer
import Foundation
import Glibc
import SocketPool
import TestSupport
import URing
import XCTest

/// What other threads know of a ring's connections (``RemoteConnections``) and whether a thread
/// is a ring's (``RingExecutor``), checked where a race needs an interleaving no client can force.
final class HandleInternalsTests: XCTestCase {
    /// A writer that checked its connection open (epoch 1) reserves room after the session was
    /// closed and reopened (epoch 2), then gives it back under its own epoch: the new connection's
    /// room must be whole afterwards, neither short nor beyond its bound.
    func testAStaleWritersRoomNeverTouchesTheNextConnectionOfItsSession() {
        let remote = RemoteConnections(capacity: 1, inboxBytes: 4096, outboundBuffers: 16, outboundSize: 4096, maxOutput: 1000)
        remote.opened(0, epoch: 1, maxOutput: 1000)
        remote.closed(0)
        remote.opened(0, epoch: 2, maxOutput: 1000)
        // The stale writer (epoch 1) passed its open check before the close.
        let reserved = remote.reserveRoom(0, 100, epoch: 1)
        XCTAssertFalse(reserved, "a reservation for a connection that has closed is refused")
        if reserved { remote.returnRoom(0, 100, epoch: 1) }
        XCTAssertEqual(remote.roomLeft(0, epoch: 2), 1000, "the new connection's room is whole")
        // Its failure path gives back room it took: only its own connection's.
        XCTAssertTrue(remote.reserveRoom(0, 300, epoch: 2))
        remote.returnRoom(0, 300, epoch: 1)
        XCTAssertEqual(remote.roomLeft(0, epoch: 2), 700, "room given back under an old epoch is not credited")
        remote.returnRoom(0, 300, epoch: 2)
        XCTAssertEqual(remote.roomLeft(0, epoch: 2), 1000)
    }

    /// Records the ring thread's id as a connection opens.
    struct ThreadRecorder: ConnectionHandler {
        let thread: Locked<pthread_t?>
        mutating func opened(_ connection: Connection) { thread.with { $0 = pthread_self() } }
        mutating func received(_ bytes: UnsafeMutableRawBufferPointer, connection: Connection) -> Reply { .nothing }
    }

    /// A thread that gets the id of a ring's exited thread (glibc hands a joined thread's id out
    /// again) is not that ring's: the ring's state is gone.
    func testAThreadReusingAnExitedRingThreadsIDIsNotTheRing() throws {
        if let reason = ioUringUnavailableReason() { throw XCTSkip(reason) }
        var c = ServerConfiguration()
        c.port = 0
        c.threads = 1
        let recorded = Locked<pthread_t?>(nil)
        let server = Server(configuration: c) { ThreadRecorder(thread: recorded) }
        try server.start()
        let executor = try XCTUnwrap(server.port(ofRing: 0)).executor
        let s = try TestSocket.connect(port: server.boundAddress!.port)
        let deadline = ContinuousClock.now + .seconds(5)
        while recorded.get == nil && ContinuousClock.now < deadline { usleep(1_000) }
        s.close()
        let ringThread = try XCTUnwrap(recorded.get)
        server.stop()
        server.wait()
        let seen = Locked<(reused: Bool, claimed: Bool)>((false, false))
        // Threads made as the ring's was (default attributes, detached), in batches alive at once,
        // so that they take every cached thread stack, the ring's among them.
        for _ in 0..<20 where !seen.get.reused {
            let started = DispatchGroup()
            let release = DispatchSemaphore(value: 0)
            let finished = DispatchGroup()
            for _ in 0..<16 {
                started.enter()
                finished.enter()
                try Posix.startThread(name: "probe") {
                    if pthread_equal(pthread_self(), ringThread) != 0 {
                        let claimed = executor.isCurrent
                        seen.with { $0 = (true, claimed) }
                    }
                    started.leave()
                    release.wait()
                    finished.leave()
                }
            }
            started.wait()
            for _ in 0..<16 { release.signal() }
            finished.wait()
            usleep(5_000)  // until the threads have exited and their stacks are free again
        }
        try XCTSkipUnless(seen.get.reused, "no new thread got the exited ring thread's id")
        XCTAssertFalse(seen.get.claimed, "a new thread with a reused id is not the exited ring's")
    }
}
