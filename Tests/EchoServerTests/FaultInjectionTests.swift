import SocketPool
import URing
import EchoServer
import Foundation
import Glibc
import TestSupport
import XCTest

final class FaultInjectionTests: ServerTestCase {
    static let block = SharedBlock(count: 1 << 20, seed: 0xFA017)

    func testCompletionQueueSmallerThanTheBurstLosesNothing() throws {
        try requireIOUring("the submission and completion queues' sizes")
        // SQ of 4 and CQ of 16 entries against 200 connections streaming at once: the SQ fills and
        // is flushed early, the CQ overflows into the kernel's overflow list (IORING_FEAT_NODROP),
        // and every byte still comes back.
        for mode in PoolMode.allCases {
            var c = config(mode, .bufferRing)
            c.ringEntries = 4
            try withServer(c) { server, port in
                let outcome = Locked(ClientOutcome())
                parallel(4, timeout: 90) { t in
                    let list = (0..<50).map { i in
                        ClientScript(start: (t * 50 + i) * 4099, length: 100_000, sendUntil: 100_000, readUntil: 0,
                                     chunk: 8192, ending: .halfClose)
                    }
                    let o = runClients(list, block: Self.block, port: port, timeout: .seconds(80))
                    outcome.with { $0.completed += o.completed; $0.mismatches += o.mismatches }
                }
                XCTAssertEqual(outcome.get.completed, 200, "\(mode)")
                XCTAssertEqual(outcome.get.mismatches, 0, "\(mode)")
                XCTAssertTrue(eventually { server.statistics.closed == 200 })
                XCTAssertGreaterThan(
                    server.statistics.completionQueueOverflows, 0, "\(mode): the burst did overflow the 16-entry CQ")
            }
        }
    }

    func testStopUnderFullLoadLeavesNothingBehind() throws {
        for (mode, receive) in Self.variants {
            let baseline = openDescriptorCount()
            let server = Server(configuration: config(mode, receive))
            try server.start()
            let port = server.boundAddress!.port
            let finished = DispatchGroup()
            let outcome = Locked(ClientOutcome())
            for t in 0..<4 {
                finished.enter()
                Thread {
                    let list = (0..<50).map { i in
                        ClientScript(start: (t * 50 + i) * 7001, length: 50 << 20, sendUntil: 50 << 20, readUntil: 0,
                                     chunk: 65_536, ending: .halfClose)
                    }
                    let o = runClients(list, block: Self.block, port: port, timeout: .seconds(20))
                    outcome.with { $0.mismatches += o.mismatches; $0.failures += o.failures; $0.verifiedBytes += o.verifiedBytes }
                    finished.leave()
                }.start()
            }
            // Stop while 200 connections are streaming 50 MiB each.
            XCTAssertTrue(eventually { server.statistics.bytesOut > 20 << 20 }, "\(mode)/\(receive): under load")
            server.stop()
            server.wait()
            // Every client saw its connection end well before its own 20 s timeout.
            XCTAssertEqual(finished.wait(timeout: .now() + 10), .success, "\(mode)/\(receive): every client saw its end")
            let s = server.statistics
            XCTAssertEqual(s.active, 0)
            XCTAssertEqual(s.sessions.inUse, 0)
            XCTAssertEqual(s.slots.inUse, 0)
            XCTAssertEqual(s.contexts.inUse, 0)
            XCTAssertEqual(s.buffersHeld, 0)
            XCTAssertEqual(outcome.get.mismatches, 0, "what was echoed before the stop was right")
            // Cut short by the stop; one may have had all its 50 MiB echoed first (seen on epoll).
            XCTAssertGreaterThanOrEqual(outcome.get.failures, 190, "the stop cut the streams")
            XCTAssertEqual(openDescriptorCount(), baseline, "\(mode)/\(receive): no descriptor left")
        }
    }

    func testDescriptorExhaustionInAChildProcess() throws {
        // The executable in a child with RLIMIT_NOFILE = 40: clients beyond what its descriptor
        // table holds wait (accepting pauses on EMFILE), the server keeps serving the others, and
        // serves the waiting ones once descriptors free up.
        let binary = try XCTUnwrap(uringEchoBinary(), "uring-echo must be built (make test builds it)")
        let (process, out, first) = try launchServer(
            URL(fileURLWithPath: "/bin/sh"),
            ["-c", "ulimit -n 40 && exec \"$0\" --port 0 --mode unpooled --idle-timeout 0", binary.path])
        defer { if process.isRunning { process.terminate() } }
        let port = try XCTUnwrap(UInt16(first.split(separator: ":")[1].prefix { $0.isNumber }), first)
        var clients: [TestSocket] = []
        for _ in 0..<60 { clients.append(try TestSocket.connect(port: port)) }
        // Some are served at once; the rest wait in the backlog while the child is out of descriptors.
        for (i, s) in clients.enumerated() { try s.writeAll([UInt8(i)]) }
        usleep(500_000)
        var served = 0
        var echoed = [Bool](repeating: false, count: clients.count)
        for (i, s) in clients.enumerated() {
            var byte: UInt8 = 0
            if recv(s.fd, &byte, 1, Int32(MSG_DONTWAIT)) == 1 && byte == UInt8(i) {
                served += 1
                echoed[i] = true
            }
        }
        XCTAssertGreaterThan(served, 0)
        XCTAssertLessThan(served, 60, "the child ran out of descriptors")
        XCTAssertTrue(process.isRunning, "EMFILE did not bring the server down")
        // Close the served ones: the waiting ones get their echo.
        var waiting: [(Int, TestSocket)] = []
        for (i, s) in clients.enumerated() {
            if echoed[i] { s.close() } else { waiting.append((i, s)) }
        }
        var late = 0
        for (i, s) in waiting {
            s.setTimeout(seconds: 10)
            if (try? s.readExactly(1)) == [UInt8(i)] { late += 1 }
            s.close()
        }
        XCTAssertEqual(late, waiting.count, "every waiting client was served after the pause")
        kill(process.processIdentifier, SIGTERM)
        XCTAssertTrue(waitForExit(process), "stopped within 15 s of SIGTERM")
        XCTAssertEqual(process.terminationStatus, 0)
        let rest = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let pauses = rest.components(separatedBy: "accept pauses ").dropFirst().last.flatMap { Int($0.prefix { $0.isNumber }) }
        XCTAssertGreaterThanOrEqual(pauses ?? 0, 1, "the final statistics count the EMFILE pause: \(rest)")
    }
}
