@testable import EchoServer
import Foundation
import Glibc
import TestSupport
import URing
import XCTest

/// The server's own life: not started → starting → serving → stopping → stopped (or failed), and
/// `stop()`, `wait()` and deinit at any moment of it.
final class ServerLifecycleTests: ServerTestCase {
    /// Runs `body` on a thread; true if it returned within `timeout`.
    func returns(within timeout: Duration, _ body: @escaping @Sendable () -> Void) -> (done: Locked<Bool>, Bool) {
        let done = Locked(false)
        Thread {
            body()
            done.with { $0 = true }
        }.start()
        return (done, eventually(timeout) { done.get })
    }

    func testStopBeforeStartIsNotLost() throws {
        let baseline = openDescriptorCount()
        var c = config(.pooled, .bufferRing)
        c.threads = 2
        let server = Server(configuration: c)
        server.stop()
        XCTAssertThrowsError(try server.start(), "a stopped server does not start") { error in
            XCTAssertEqual(error as? ServerError, .stopped)
        }
        let (_, waited) = returns(within: .seconds(3)) { server.wait() }
        if !waited { server.stop() }  // the bug: it serves; end it so the test can finish
        XCTAssertTrue(waited, "wait() returns after a stop that came before start()")
        XCTAssertNil(server.boundAddress, "nothing was bound")
        XCTAssertTrue(eventually { openDescriptorCount() == baseline }, "no descriptor left")
    }

    func testStopWhileStartingIsNotLost() throws {
        var c = config(.pooled, .bufferRing)
        c.threads = 2
        let server = Server(configuration: c)
        // Between claiming the start and publishing the rings' wake-ups: the window where a stop
        // used to find nothing to signal.
        var faults = FaultInjection()
        faults.whileStarting = { server.stop() }
        server.inject(faults)
        try server.start()
        let (_, waited) = returns(within: .seconds(3)) { server.wait() }
        if !waited { server.stop() }
        XCTAssertTrue(waited, "a stop during start() ends the server")
        XCTAssertNil(server.failure, "a requested stop is not a failure")
    }

    func testWaitBeforeStartWaitsForTheStop() throws {
        let server = Server(configuration: config(.pooled, .bufferRing))
        let (waited, early) = returns(within: .milliseconds(300)) { server.wait() }
        XCTAssertFalse(early, "wait() before start() does not return before the server has run and stopped")
        try server.start()
        let port = server.boundAddress!.port
        XCTAssertEqual(try Self.roundTrip(port: port, [1, 2, 3]), [1, 2, 3], "serves while someone waits")
        XCTAssertFalse(waited.get)
        server.stop()
        XCTAssertTrue(eventually { waited.get }, "wait() returns once stopped")
        // The wake-up descriptors are still the server's: a second stop writes to them, not to
        // whatever file took their numbers.
        let probe = try Sockets.makeEventFD()
        defer { _ = try? Sockets.close(probe) }
        server.stop()
        var value: UInt64 = 0
        XCTAssertEqual(read(probe, &value, 8), -1, "nothing was written into a reused descriptor number")
    }

    func testListeningAddressWaitsForTheStartWithoutPolling() async throws {
        let server = Server(configuration: config(.pooled, .bufferRing))
        let waiter = Task { try await server.listeningAddress }
        usleep(100_000)
        try server.start()
        let address = try await waiter.value
        XCTAssertEqual(address, server.boundAddress, "the address the start bound")
        let again = try await server.listeningAddress
        XCTAssertEqual(again, address, "known at once afterwards")
        server.stop()
        await server.waitUntilStopped()

        let stopped = Server(configuration: config(.pooled, .bufferRing))
        let early = Task { try await stopped.listeningAddress }
        stopped.stop()
        do {
            _ = try await early.value
            XCTFail("a server stopped before it started never listens")
        } catch {
            XCTAssertEqual(error as? ServerError, .stopped)
        }
        var bad = config(.pooled, .bufferRing)
        bad.threads = 0
        let failing = Server(configuration: bad)
        XCTAssertThrowsError(try failing.start())
        do {
            _ = try await failing.listeningAddress
            XCTFail("a failed start is reported")
        } catch {
            guard case .invalidConfiguration = error as? ServerError else { return XCTFail("\(error)") }
        }
    }

    func testAServerDroppedWithoutWaitClosesItsDescriptors() throws {
        let baseline = openDescriptorCount()
        do {
            var c = config(.unpooled, .perSessionBuffer)
            c.threads = 3
            let server = Server(configuration: c)
            try server.start()
            XCTAssertEqual(try Self.roundTrip(port: server.boundAddress!.port, [9]), [9])
            server.stop()
        }
        XCTAssertTrue(
            eventually { openDescriptorCount() == baseline },
            "listeners, rings and wake-up descriptors closed without wait(): \(openDescriptorCount()) open, \(baseline) before")
    }
}

/// ``ServerLifecycle`` alone: every event in every state, without threads or rings.
final class ServerLifecycleTableTests: XCTestCase {
    typealias L = ServerLifecycle

    func mailboxes(_ count: Int = 1) -> Mailboxes {
        Mailboxes(count: count, capacity: 4096, wakeDescriptors: Array(repeating: -1, count: count))
    }

    func testAStopBeforeStartIsRememberedAndRefusesTheStart() {
        var l = L()
        guard case .stoppedBeforeStart = l.stopRequested() else { return XCTFail("stop before start stops") }
        XCTAssertEqual(l.startRequested(), .throwStopped)
        guard case .none = l.stopRequested() else { return XCTFail("a second stop does nothing") }
        XCTAssertFalse(l.ringThreadEnded(), "nothing ran")
    }

    func testAStopWhileStartingIsDeliveredWhenTheRingsExist() {
        var l = L()
        XCTAssertEqual(l.startRequested(), .proceed)
        XCTAssertEqual(l.startRequested(), .throwAlreadyStarted)
        guard case .none = l.stopRequested() else { return XCTFail("no ring to wake yet") }
        let m = mailboxes(2)
        guard case .wake(let woken) = l.ringsCreated(m, threads: 2) else { return XCTFail("the stop is delivered") }
        XCTAssertTrue(woken === m)
        l.ringsReady()
        guard case .stopping = l.state else { return XCTFail("ready after a stop: stopping, not serving") }
        XCTAssertFalse(l.ringThreadEnded())
        XCTAssertTrue(l.ringThreadEnded(), "the last ring thread stops the server")
        guard case .stopped(started: true) = l.state else { return XCTFail("stopped") }
        XCTAssertNil(l.mailboxes, "a stopped server hands out no mailboxes (their eventfds are closed)")
        XCTAssertEqual(l.startRequested(), .throwAlreadyStarted)
    }

    func testServingStopsOnceAndAFailureIsReported() {
        var l = L()
        _ = l.startRequested()
        let m = mailboxes()
        guard case .none = l.ringsCreated(m, threads: 1) else { return XCTFail("no stop yet") }
        l.ringsReady()
        guard case .serving = l.state else { return XCTFail("serving") }
        guard case .wake = l.ringFailed(0, URingError("io_uring_enter", errno: .invalidArgument)) else {
            return XCTFail("a failure stops the other rings")
        }
        guard case .wake = l.stopRequested() else { return XCTFail("stop while stopping wakes again (idempotent)") }
        XCTAssertNotNil(l.failureReported)
        XCTAssertTrue(l.ringThreadEnded())
        guard case .failed(.ringFailed(ring: 0, _)) = l.state else { return XCTFail("failed, with the ring's error") }
        guard case .none = l.stopRequested() else { return XCTFail("nothing to wake once stopped") }
    }

    func testSetupThatFailsBeforeTheRingsStopsTheServer() {
        var l = L()
        _ = l.startRequested()
        XCTAssertTrue(l.startFailed())
        guard case .stopped(started: true) = l.state else { return XCTFail("stopped") }
        XCTAssertFalse(l.startFailed())
    }

    func testAPostToARingThatHasExitedIsRefused() {
        let m = mailboxes(2)
        let bytes: [UInt8] = [1, 2, 3]
        bytes.withUnsafeBytes { b in
            let (first, wake) = m.post(b, value: 7, from: 0, to: 1)
            XCTAssertEqual(first, .posted)
            XCTAssertTrue(wake, "the first message wakes the target")
            XCTAssertFalse(m.post(b, value: 8, from: 0, to: 1).wake, "one wake-up per batch")
            m.ports[1].exited.store(true, ordering: .releasing)
            XCTAssertEqual(m.post(b, value: 9, from: 0, to: 1).0, .noSuchRing, "a ring that has exited takes no mail")
            XCTAssertEqual(m.post(b, value: 9, from: 1, to: 0).0, .posted, "the others still do")
        }
    }
}
