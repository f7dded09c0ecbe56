import SocketPool
import URing
import EchoServer
import Foundation
import Glibc
import ServiceLifecycle
import Logging
import TestSupport
import XCTest

final class LifecycleTests: ServerTestCase {
    func testHalfCloseEchoesEverythingThenCloses() throws {
        for (mode, receive) in Self.variants {
            try withServer(config(mode, receive)) { server, port in
                let s = try TestSocket.connect(port: port)
                defer { s.close() }
                let bytes = patternBytes(seed: 5, count: 300_000)
                try s.writeAll(bytes)
                s.shutdownWrite()
                let back = try s.readToEnd()
                XCTAssertTrue(back == bytes, "\(mode)/\(receive): all bytes echoed before the close")
                XCTAssertTrue(eventually { server.statistics.closed == 1 })
            }
        }
    }

    func testResetMidStreamAndConnectCloseWithoutDataLeaveServerServing() throws {
        for (mode, receive) in Self.variants {
            try withServer(config(mode, receive)) { server, port in
                for i in 0..<50 {
                    let s = try TestSocket.connect(port: port)
                    try s.writeAll(patternBytes(seed: UInt64(i), count: 100_000))
                    if i % 2 == 0 { _ = try? s.readSome() }  // sometimes mid-echo
                    s.reset()
                }
                for _ in 0..<50 { try TestSocket.connect(port: port).close() }
                XCTAssertTrue(eventually { server.statistics.closed == 100 }, "\(mode)/\(receive): every connection closed")
                XCTAssertEqual(try Self.roundTrip(port: port, [1, 2, 3]), [1, 2, 3], "still echoes")
                XCTAssertTrue(eventually { server.statistics.active == 0 })
            }
        }
    }

    func testStalledReaderCostsBoundedMemoryAndLosesNothing() throws {
        for (mode, receive) in Self.variants {
            var c = config(mode, receive)
            c.maxPendingBytesPerConnection = 64 * 1024
            try withServer(c) { server, port in
                let s = try TestSocket.connect(port: port)
                defer { s.close() }
                let total = 8 << 20
                let bytes = patternBytes(seed: 8, count: total)
                let written = Locked(0)
                Thread {
                    var offset = 0
                    while offset < total {
                        let n = bytes.withUnsafeBytes { send(s.fd, $0.baseAddress! + offset, min(65536, total - offset), 0) }
                        if n <= 0 { break }
                        offset += n
                        written.with { $0 = offset }
                    }
                }.start()
                // Nobody reads: the writer must stall long before 8 MiB, and the server holds at most
                // its bound plus what the kernel socket buffers take.
                // (Loopback socket buffers autotune to megabytes, so the writer itself may get all 8 MiB
                // into the kernel; what matters is that the server does not hold it.)
                XCTAssertTrue(eventually { written.get == total || server.statistics.receivePauses > 0 || receive == .perSessionBuffer })
                usleep(300_000)
                let held = Int(server.statistics.bytesIn - server.statistics.bytesOut)
                print("stalled reader, \(mode)/\(receive): server holds \(held) bytes (bound 65536)")
                // With a receive limit (Linux 6.17) a multishot receive ends at the connection's share,
                // so the bound is exact (a partly filled buffer aside). Without it the bound is
                // checked as each completion is handled, and completions already harvested in the
                // same loop turn still land: with bundles each carries up to half the share (seen
                // up to 64 KiB + 19 KiB, 1 run in 10). Then one more bundle is allowed.
                let limited = server.statistics.features.contains(.receiveLimit) || receive == .perSessionBuffer
                XCTAssertLessThanOrEqual(
                    held, 64 * 1024 + (limited ? 2 * 4096 : 32 * 1024 + 4096),
                    "\(mode)/\(receive): server holds a bounded amount")
                if receive == .bufferRing {
                    XCTAssertGreaterThanOrEqual(server.statistics.receivePauses, 1)
                }
                // Now read: every byte comes back in order.
                let back = try s.readExactly(total)
                XCTAssertTrue(back == bytes, "\(mode)/\(receive): nothing lost or reordered")
            }
        }
    }

    func testIdleTimeoutClosesSilentConnections() throws {
        for (mode, receive) in Self.variants {
            var c = config(mode, receive)
            c.idleTimeout = .milliseconds(300)
            try withServer(c) { server, port in
                let silent = try TestSocket.connect(port: port)
                defer { silent.close() }
                let start = ContinuousClock.now
                XCTAssertEqual(try silent.readSome(), [], "\(mode)/\(receive): the server closed the silent connection")
                let elapsed = ContinuousClock.now - start
                XCTAssertGreaterThanOrEqual(elapsed, .milliseconds(250))
                XCTAssertLessThan(elapsed, .seconds(3))
                XCTAssertTrue(eventually { server.statistics.idleClosed == 1 })
            }
        }
    }

    func testTinyBufferRingForcesENOBUFSAndEveryConnectionStillCompletes() throws {
        // The ordinary ring (two 64-byte buffers) and the incremental one (the same 128 bytes, as
        // two buffers that receives share).
        // (On epoll there is no incremental ring, and an echo is sent at once and its buffer given
        // back, so this load does not run the pool dry: testConsumersHoldingEveryReceiveBuffer…
        // makes it run dry on both drivers.)
        for incremental in testDriver == .ioUring ? [false, true] : [false] {
            for mode in PoolMode.allCases {
                var c = config(mode, .bufferRing)
                c.bufferRingEntries = 2
                c.bufferSize = 64
                c.maxPendingBytesPerConnection = 64
                if incremental { c.features.insert(.incrementalBuffers) }
                let label = "\(mode)/\(incremental ? "incremental" : "ordinary")"
                try withServer(c) { server, port in
                    XCTAssertEqual(server.statistics.features.contains(.incrementalBuffers), incremental, label)
                    let ok = Locked(0)
                    parallel(20) { i in
                        let bytes = patternBytes(seed: UInt64(300 + i), count: 10_000)
                        if let back = try? Self.roundTrip(port: port, bytes), back == bytes { ok.with { $0 += 1 } }
                    }
                    XCTAssertEqual(ok.get, 20, "\(label): no connection stalled on ENOBUFS")
                    // Statistics are published once per tick.
                    guard testDriver == .ioUring else { return }
                    XCTAssertTrue(eventually { server.statistics.bufferShortages > 0 }, "\(label): the ring ran dry")
                    XCTAssertTrue(
                        eventually { server.statistics.receiveRearms > 0 }, "\(label): receives were re-armed")
                }
            }
        }
    }

    func testFullSlotTablePausesAcceptingOnceAndLosesNoClient() throws {
        // No spare slots: with four connections open, every slot is taken and no accept may be
        // posted (a direct accept into a full table would drop the connection). Accepting pauses,
        // once, without spinning, and resumes as slots free.
        // Pre-posted single-shot accepts: direct multishot accept into kernel-chosen slots has a
        // backlog's worth of spare slots by design (testADirectMultishotAcceptBurst…).
        try requireIOUring("registered-file slots")
        var c = config(.pooled, .bufferRing)
        c.maxConnections = 4
        c.spareSlots = 0
        c.features.remove(.directMultishotAccept)
        try withServer(c) { server, port in
            let held = try (0..<4).map { _ in try TestSocket.connect(port: port) }
            for s in held {
                try s.writeAll([1])
                XCTAssertEqual(try s.readExactly(1), [1])
            }
            let waiting = try (0..<6).map { _ in try TestSocket.connect(port: port) }
            XCTAssertTrue(eventually { server.statistics.acceptPauses == 1 })
            let submitsWhilePaused = server.statistics.submits
            usleep(300_000)
            XCTAssertLessThan(server.statistics.submits - submitsWhilePaused, 20, "paused, not spinning")
            XCTAssertEqual(server.statistics.accepted, 4)
            held.forEach { $0.close() }
            for (i, s) in waiting.enumerated() {
                try s.writeAll([UInt8(i)])
                XCTAssertEqual(try s.readExactly(1), [UInt8(i)], "client \(i) waited in the backlog and was served")
                s.close()
            }
            XCTAssertEqual(server.statistics.rejected, 0)
            XCTAssertTrue(eventually { server.statistics.closed == 10 })
        }
    }

    func testAcceptUnderDescriptorLimitPausesThenServesAgain() throws {
        // Unpooled: every connection costs the process a descriptor. With RLIMIT_NOFILE lowered and
        // every free descriptor taken, the multishot accept fails with EMFILE and ends (no F_MORE);
        // the server pauses, keeps serving, and accepts again once descriptors free up.
        var c = config(.unpooled, .bufferRing)
        c.idleTimeout = nil
        // The kernel reads the limit when the accept is prepared, so lower it before the server starts.
        var original = rlimit()
        getrlimit(Int32(RLIMIT_NOFILE.rawValue), &original)
        var lowered = original
        lowered.rlim_cur = rlim_t(highestOpenDescriptor() + 64)
        setrlimit(Int32(RLIMIT_NOFILE.rawValue), &lowered)
        defer { setrlimit(Int32(RLIMIT_NOFILE.rawValue), &original) }
        try withServer(c) { server, port in
            let early = try (0..<5).map { _ in try TestSocket.connect(port: port) }
            XCTAssertTrue(eventually { server.statistics.accepted == 5 })
            // Five more client sockets exist before every descriptor left is taken; they connect after.
            let late = try (0..<5).map { _ in try TestSocket.unconnected() }
            var fillers: [Int32] = []
            defer { for fd in fillers { close(fd) } }
            while true {
                let fd = dup(0)
                if fd < 0 { break }
                fillers.append(fd)
            }
            for s in late { try s.connect(port: port) }
            XCTAssertTrue(eventually { server.statistics.acceptPauses >= 1 }, "EMFILE paused accepting")
            XCTAssertEqual(server.statistics.accepted, 5)
            for (i, s) in early.enumerated() {
                try s.writeAll([UInt8(i)])
                XCTAssertEqual(try s.readExactly(1), [UInt8(i)], "the server keeps serving while paused")
            }
            for fd in fillers { close(fd) }
            fillers.removeAll()
            for (i, s) in late.enumerated() {
                try s.writeAll([UInt8(i)])
                XCTAssertEqual(try s.readExactly(1), [UInt8(i)], "client \(i) served after the pause")
            }
            XCTAssertGreaterThanOrEqual(server.statistics.acceptRearms, 1)
            (early + late).forEach { $0.close() }
            XCTAssertTrue(eventually { server.statistics.closed == 10 })
        }
    }

    func testConnectionCapRejectsExtraClientsWithACleanClose() throws {
        for (mode, receive) in Self.variants {
            var c = config(mode, receive)
            c.maxConnections = 5
            try withServer(c) { server, port in
                let held = try (0..<5).map { _ in try TestSocket.connect(port: port) }
                for (i, s) in held.enumerated() {
                    try s.writeAll([UInt8(i)])
                    XCTAssertEqual(try s.readExactly(1), [UInt8(i)])
                }
                let extra = try TestSocket.connect(port: port)
                XCTAssertEqual(try extra.readSome(), [], "\(mode)/\(receive): the sixth client sees EOF, not a hang")
                extra.close()
                XCTAssertTrue(eventually { server.statistics.rejected == 1 })
                held.forEach { $0.close() }
            }
        }
    }

    func testGracefulStopWithThousandLiveConnectionsLeavesNothingBehind() throws {
        for (mode, receive) in Self.variants {
            let baseline = openDescriptorCount()
            let server = Server(configuration: config(mode, receive))
            try server.start()
            let port = server.boundAddress!.port
            let clients = try (0..<1000).map { _ in try TestSocket.connect(port: port) }
            for s in clients.prefix(10) {
                try s.writeAll([7])
                XCTAssertEqual(try s.readExactly(1), [7])
            }
            XCTAssertTrue(eventually { server.statistics.active == 1000 }, "\(mode)/\(receive)")
            server.stop()
            server.wait()
            let s = server.statistics
            XCTAssertEqual(s.active, 0)
            XCTAssertEqual(s.sessions.inUse, 0)
            XCTAssertEqual(s.slots.inUse, 0)
            XCTAssertEqual(s.contexts.inUse, 0)
            var eofs = 0
            for c in clients {
                if (try? c.readSome()) == [] { eofs += 1 }
                c.close()
            }
            XCTAssertEqual(eofs, 1000, "\(mode)/\(receive): every client saw the server close")
            XCTAssertEqual(openDescriptorCount(), baseline, "\(mode)/\(receive): no descriptor left")
        }
    }

    func testReusePortThreadsShareAPortAndASecondServerIsRefused() throws {
        var c = config(.pooled, .bufferRing)
        c.threads = 2
        try withServer(c) { server, port in
            let ok = Locked(0)
            parallel(4) { t in
                for i in 0..<50 {
                    let bytes = patternBytes(seed: UInt64(t * 100 + i), count: 50)
                    if (try? Self.roundTrip(port: port, bytes)) == bytes { ok.with { $0 += 1 } }
                }
            }
            XCTAssertEqual(ok.get, 200)
            XCTAssertTrue(eventually { server.statistics.closed == 200 })
            // A single-thread server (no SO_REUSEPORT) on the same port is refused clearly.
            var other = ServerConfiguration()
            other.port = port
            let second = Server(configuration: other)
            XCTAssertThrowsError(try second.start()) { error in
                guard case .setup(let e) = error as? ServerError else { return XCTFail("\(error)") }
                XCTAssertEqual(e.errno, .addressInUse)
            }
        }
    }

    func testStopFromAnotherThreadEndsBlockingRun() throws {
        let server = Server(configuration: config(.pooled, .bufferRing))
        let stopped = Locked(false)
        Thread {
            try? server.run()
            stopped.with { $0 = true }
        }.start()
        XCTAssertTrue(eventually { server.boundAddress != nil })
        XCTAssertEqual(try Self.roundTrip(port: server.boundAddress!.port, [1]), [1])
        server.stop()
        XCTAssertTrue(eventually { stopped.get })
    }

    func testServiceGroupGracefulShutdownStopsTheServer() async throws {
        let server = Server(configuration: config(.unpooled, .perSessionBuffer))
        let group = ServiceGroup(services: [server], logger: Logger(label: "test"))
        let running = Task { try await group.run() }
        for _ in 0..<500 where server.boundAddress == nil { try await Task.sleep(for: .milliseconds(10)) }
        let port: UInt16 = try XCTUnwrap(server.boundAddress?.port)
        let back = try await echoOffTheCooperativePool(port: port, [4, 2])
        XCTAssertEqual(back, [4, 2])
        await group.triggerGracefulShutdown()
        try await running.value
        XCTAssertEqual(server.statistics.active, 0)
        XCTAssertEqual(server.statistics.accepted, 1)
    }

    private func echoOffTheCooperativePool(port: UInt16, _ bytes: [UInt8]) async throws -> [UInt8] {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<[UInt8], Error>) in
            Thread { continuation.resume(with: Result { try Self.roundTrip(port: port, bytes) }) }.start()
        }
    }

    func testRingThreadsBlockAsynchronousSignals() throws {
        // A ring thread must never take the process's signals: one that did would wake from
        // io_uring_enter and drop, say, a SIGTERM the application waits for on a signalfd or
        // DispatchSource (seen as an occasional `uring-echo` that ignored SIGTERM). Check each ring
        // thread's blocked mask in /proc.
        var c = config(.pooled, .bufferRing)
        c.threads = 3
        try withServer(c) { _, _ in
            var rings = 0
            let tasks = try FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")
            for tid in tasks {
                guard let name = try? String(contentsOfFile: "/proc/self/task/\(tid)/comm", encoding: .utf8),
                    name.hasPrefix("uring-ring-"),
                    let status = try? String(contentsOfFile: "/proc/self/task/\(tid)/status", encoding: .utf8),
                    let line = status.split(separator: "\n").first(where: { $0.hasPrefix("SigBlk:") }),
                    let mask = UInt64(line.split(separator: "\t").last ?? "", radix: 16)
                else { continue }
                rings += 1
                for sig in [SIGINT, SIGTERM, SIGHUP, SIGUSR1, SIGUSR2, SIGPIPE, SIGCHLD] {
                    XCTAssertNotEqual(mask & (1 << UInt64(sig - 1)), 0, "ring thread \(tid) blocks signal \(sig)")
                }
                XCTAssertEqual(mask & (1 << UInt64(SIGSEGV - 1)), 0, "synchronous faults stay unblocked")
            }
            XCTAssertEqual(rings, 3, "three named ring threads")
        }
    }

    func testInvalidConfigurationIsAClearError() {
        var c = ServerConfiguration()
        c.host = "not-an-address"
        XCTAssertThrowsError(try Server(configuration: c).start()) { error in
            XCTAssertTrue("\(error)".contains("not-an-address"), "\(error)")
        }
        c = ServerConfiguration()
        c.bufferRingEntries = 1000
        XCTAssertThrowsError(try c.validate())
    }
}
