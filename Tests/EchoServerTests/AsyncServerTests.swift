import EchoServer
import Foundation
import Glibc
import Logging
import ServiceLifecycle
import SocketPool
import Synchronization
import TestSupport
import URing
import XCTest

/// The async API on real rings: `serve`, inbound, outbound, handles from tasks.
final class AsyncServerTests: ServerTestCase {
    /// Runs `serve(body)` in a task, gives `test` the port, then cancels the task and checks that
    /// everything ended and nothing was left behind.
    func withAsyncServer(
        _ configuration: ServerConfiguration, file: StaticString = #filePath, line: UInt = #line,
        body: @escaping @Sendable (AsyncConnection) async throws -> Void,
        _ test: (AsyncServer, UInt16) async throws -> Void
    ) async throws {
        // The runtime's timer machinery opens its descriptors on first use: before the baseline.
        try await Task.sleep(for: .milliseconds(1))
        let baseline = openDescriptorCount()
        let server = AsyncServer(configuration: configuration)
        let serving = Task { try await server.serve(body) }
        let address = try await server.listeningAddress
        var failure: (any Error)?
        do { try await test(server, address.port) } catch { failure = error }
        serving.cancel()
        try await serving.value
        let s = server.statistics
        let label = "\(configuration.mode)/\(configuration.receive)"
        XCTAssertEqual(s.active, 0, "\(label): no connection left", file: file, line: line)
        XCTAssertEqual(s.sessions.inUse, 0, "\(label): sessions back", file: file, line: line)
        XCTAssertEqual(s.buffersHeld, 0, "\(label): every buffer given back once", file: file, line: line)
        XCTAssertEqual(openDescriptorCount(), baseline, "\(label): descriptors back to baseline", file: file, line: line)
        if let failure { throw failure }
    }

    static let echo: @Sendable (AsyncConnection) async throws -> Void = { connection in
        for await chunk in connection.inbound { try await connection.outbound.write(chunk) }
    }

    func testAsyncEchoSendsEveryByteBackInOrderAndClosesAfterTheFIN() async throws {
        for (mode, receive) in Self.variants {
            try await withAsyncServer(config(mode, receive), body: Self.echo) { server, port in
                let bytes = patternBytes(seed: 3, count: 1 << 20)
                XCTAssertTrue(try Self.roundTrip(port: port, bytes) == bytes, "\(mode)/\(receive)")
                let ok = Locked(0)
                parallel(8) { t in
                    for i in 0..<20 {
                        let b = patternBytes(seed: UInt64(t * 100 + i), count: 3000)
                        if (try? Self.roundTrip(port: port, b)) == b { ok.with { $0 += 1 } }
                    }
                }
                XCTAssertEqual(ok.get, 160, "\(mode)/\(receive)")
                XCTAssertTrue(eventually { server.statistics.closed == 161 && server.statistics.active == 0 })
            }
        }
    }

    func testAConnectionsTaskRunsOnItsRingsThread() async throws {
        var c = config(.pooled, .bufferRing)
        c.threads = 2
        let names = Locked<[String]>([])
        try await withAsyncServer(c, body: { connection in
            let name = { (try? readFile("/proc/thread-self/comm")) ?? "?" }
            names.with { $0.append(name()) }
            for await _ in connection.inbound {}
            try await Task.sleep(for: .milliseconds(5))  // and after a sleep, still there
            names.with { $0.append(name()) }
        }) { server, port in
            for _ in 0..<6 { _ = try Self.roundTrip(port: port, [1]) }
            XCTAssertTrue(eventually { names.get.count == 12 })
            XCTAssertTrue(names.get.allSatisfy { $0.hasPrefix("uring-ring-") }, "\(names.get)")
        }
    }

    func testWritingGoesOnAfterTheFINUntilTheClosureReturns() async throws {
        try await withAsyncServer(config(.pooled, .bufferRing), body: { connection in
            var total = 0
            for await chunk in connection.inbound { total += chunk.count }
            try await Task.sleep(for: .milliseconds(20))  // a backend call, after the peer's FIN
            try await connection.outbound.write("total \(total)\n")
        }) { server, port in
            let s = try TestSocket.connect(port: port)
            defer { s.close() }
            s.setTimeout(seconds: 5)
            try s.writeAll(patternBytes(seed: 1, count: 100_000))
            s.shutdownWrite()
            XCTAssertEqual(String(decoding: try s.readToEnd(), as: UTF8.self), "total 100000\n")
        }
    }

    struct Boom: Error {}

    func testAThrownErrorAbortsThatConnectionOnly() async throws {
        try await withAsyncServer(config(.pooled, .bufferRing), body: { connection in
            for await chunk in connection.inbound {
                if chunk.bytes.contains(0x21) { throw Boom() }  // "!"
                try await connection.outbound.write(chunk)
            }
        }) { server, port in
            let good = try TestSocket.connect(port: port)
            defer { good.close() }
            good.setTimeout(seconds: 5)
            let bad = try TestSocket.connect(port: port)
            defer { bad.close() }
            bad.setTimeout(seconds: 5)
            try bad.writeAll(Array("boom!".utf8))
            XCTAssertThrowsError(try bad.readToEnd(), "aborted: reset, nothing echoed") { error in
                XCTAssertEqual((error as? URingError)?.errno, .connectionReset, "\(error)")
            }
            try good.writeAll(Array("fine".utf8))
            XCTAssertEqual(try good.readExactly(4), Array("fine".utf8), "the other connection goes on")
        }
    }

    func testStoppingWithAThousandOpenConnectionsEndsEveryTaskAndLeavesNothing() async throws {
        var c = config(.pooled, .bufferRing)
        c.threads = 2
        let running = Locked(0)
        let ended = Locked(0)
        try await withAsyncServer(c, body: { connection in
            running.with { $0 += 1 }
            defer { ended.with { $0 += 1 } }
            for await chunk in connection.inbound { try await connection.outbound.write(chunk) }
        }) { server, port in
            var clients: [TestSocket] = []
            for _ in 0..<1000 { clients.append(try TestSocket.connect(port: port)) }
            XCTAssertTrue(eventually(.seconds(10)) { running.get == 1000 }, "\(running.get) tasks running")
            server.stop()
            for client in clients {
                client.setTimeout(seconds: 5)
                XCTAssertEqual(try? client.readToEnd(), [], "the server closed it")
                client.close()
            }
            XCTAssertTrue(eventually(.seconds(10)) { ended.get == 1000 }, "every task ended: \(ended.get)")
        }
        XCTAssertEqual(ended.get, 1000, "every task ended")
    }

    func testASlowConsumerPausesReceivingAndHoldsBoundedMemory() async throws {
        for receive in [ReceiveStrategy.bufferRing, .perSessionBuffer] {
            var c = config(.pooled, receive)
            c.maxBuffersPerConnection = 16
            try await withAsyncServer(c, body: { connection in
                for await chunk in connection.inbound {
                    try await Task.sleep(for: .milliseconds(1))  // a consumer slower than the peer
                    try await connection.outbound.write(chunk)
                }
            }) { server, port in
                let s = try TestSocket.connect(port: port)
                defer { s.close() }
                s.setTimeout(seconds: 30)
                let total = 4 << 20
                let bytes = patternBytes(seed: 5, count: total)
                let writer = SocketWriter(s, bytes)
                defer { writer.stop() }
                usleep(300_000)
                let held = server.statistics.buffersHeld
                XCTAssertLessThanOrEqual(held, 16 + 2, "\(receive): the lagging consumer holds at most its share")
                if receive == .bufferRing { XCTAssertGreaterThan(server.statistics.receivePauses, 0) }
                let back = try s.readExactly(total)
                XCTAssertTrue(back == bytes, "\(receive): nothing lost or reordered")
            }
        }
    }

    /// Consumers that hold every receive buffer (two of 64 bytes) stall nobody for good: the other
    /// connections wait for buffers (counted as shortages) and are served as the holders let go.
    func testConsumersHoldingEveryReceiveBufferStallNoOtherConnectionForGood() async throws {
        var c = config(.pooled, .bufferRing)
        c.bufferRingEntries = 2
        c.bufferSize = 64
        c.maxPendingBytesPerConnection = 64
        try await withAsyncServer(c, body: { connection in
            for await chunk in connection.inbound {
                try await Task.sleep(for: .milliseconds(200))  // holds its buffer meanwhile
                try await connection.outbound.write(chunk)
            }
        }) { server, port in
            let clients = try (0..<4).map { _ in try TestSocket.connect(port: port) }
            defer { clients.forEach { $0.close() } }
            for (i, s) in clients.enumerated() {
                s.setTimeout(seconds: 10)
                try s.writeAll(Array(repeating: UInt8(i), count: 64))
            }
            for (i, s) in clients.enumerated() {
                XCTAssertEqual(try s.readExactly(64), Array(repeating: UInt8(i), count: 64), "client \(i) served")
            }
            XCTAssertTrue(eventually { server.statistics.bufferShortages > 0 }, "the buffers ran out")
        }
    }

    func testASyncHandlerAnswersLaterFromATask() throws {
        struct Later: ConnectionHandler {
            mutating func received(_ bytes: UnsafeMutableRawBufferPointer, connection: Connection) -> Reply {
                let handle = connection.handle
                let copy = Array(bytes)
                Task {
                    try await Task.sleep(for: .milliseconds(20))
                    await handle.write("later: ")
                    await handle.write(copy)
                }
                return .nothing
            }
        }
        try withServer(config(.pooled, .bufferRing), handler: { Later() }) { server, port in
            let s = try TestSocket.connect(port: port)
            defer { s.close() }
            s.setTimeout(seconds: 5)
            try s.writeAll(Array("hi".utf8))
            XCTAssertEqual(String(decoding: try s.readExactly(9), as: UTF8.self), "later: hi")
        }
    }

    /// Heap allocations of the ring's thread (the loop and the connections' tasks both run there)
    /// per message of an async echo (64-byte ping-pong on one connection) and per connection
    /// (accept, a child task, echo 64 bytes, close), after warm-up, on the real loop.
    func testAsyncEchoAllocationsPerMessageAndPerConnection() async throws {
        try XCTSkipUnless(allocationCounterAvailable, "the malloc counter is left out under sanitizers")
        for (mode, receive) in [(PoolMode.pooled, ReceiveStrategy.bufferRing), (.pooled, .perSessionBuffer)] {
            var c = config(mode, receive)
            c.threads = 1
            c.maxConnections = 8
            let messages = AllocationMarks(warmup: 200, measured: 2000)
            let closes = AllocationMarks(warmup: 100, measured: 1000)
            let opened = Atomic<Int>(0)
            try await withAsyncServer(c, body: { connection in
                closes.mark(opened.add(1, ordering: .relaxed).newValue)
                var count = 0
                for await chunk in connection.inbound {
                    if chunk.count == 64 {
                        count += 1
                        messages.mark(count)
                    }
                    try await connection.outbound.write(chunk)
                }
            }) { server, port in
                try driveAllocationLoad(
                    port: port, seed: 7, messages: messages, connections: closes.warmup + closes.measured, each: [1, 2, 3])
                XCTAssertTrue(eventually { server.statistics.closed == UInt64(closes.warmup + closes.measured + 1) })
            }
            let label = "async/\(mode)/\(receive)"
            print("allocations \(label): \(messages.perEvent) per message, \(closes.perEvent) per connection")
            XCTAssertEqual(messages.perEvent, 0, "\(label): zero heap allocations per message")
            // Per connection, in this (debug) build, 9: the child task (its object, its closure's
            // context, the group's record of it), the task allocator's slabs for the frames past
            // its first (4 here: one of them since the wait for input ends on cancellation, its
            // cancellation record and frame pushing the task past a slab), and the accepted
            // connection's box in the AsyncStream that hands it to the accept loop. All freed when
            // the task ends.
            XCTAssertLessThanOrEqual(closes.perEvent, 9, "\(label): per connection")
        }
    }

    /// As a swift-service-lifecycle `Service`: a graceful shutdown of its `ServiceGroup` ends every
    /// `inbound`, closes every connection and ends every task before `run()` returns.
    func testAServiceGroupGracefulShutdownClosesEveryConnectionAndEndsEveryTask() async throws {
        try await Task.sleep(for: .milliseconds(1))  // the runtime's timer descriptors, before the baseline
        let baseline = openDescriptorCount()
        let ended = Locked(0)
        let server = AsyncServer(configuration: config(.pooled, .bufferRing)) { connection in
            defer { ended.with { $0 += 1 } }
            for await chunk in connection.inbound { try await connection.outbound.write(chunk) }
        }
        let group = ServiceGroup(services: [server], logger: Logger(label: "test"))
        let running = Task { try await group.run() }
        let port = try await server.listeningAddress.port
        var clients: [TestSocket] = []
        for i in 0..<10 {
            let s = try TestSocket.connect(port: port)
            s.setTimeout(seconds: 5)
            try s.writeAll([UInt8(i)])
            XCTAssertEqual(try s.readExactly(1), [UInt8(i)])
            clients.append(s)
        }
        await group.triggerGracefulShutdown()
        try await running.value
        XCTAssertEqual(ended.get, 10, "every connection's task ended before run() returned")
        for s in clients {
            XCTAssertEqual(try? s.readToEnd(), [], "closed by the server")
            s.close()
        }
        XCTAssertEqual(server.statistics.active, 0)
        XCTAssertEqual(server.statistics.sessions.inUse, 0)
        XCTAssertEqual(server.statistics.buffersHeld, 0)
        XCTAssertEqual(openDescriptorCount(), baseline, "descriptors back to baseline")
    }

    /// A chunk held across an await while the peer resets the connection: writing it throws
    /// .closed and reading it gives no bytes (it used to trap: the receive buffer had gone back).
    func testAChunkHeldWhileThePeerResetsIsClosedNotATrap() async throws {
        let outcome = Locked<String>("")
        try await withAsyncServer(config(.pooled, .bufferRing), body: { connection in
            for await chunk in connection.inbound {
                try await Task.sleep(for: .milliseconds(100))  // the peer resets meanwhile
                let bytes = chunk.bytes
                do {
                    try await connection.outbound.write(chunk)
                    outcome.with { $0 = "written \(bytes.count)" }
                } catch {
                    outcome.with { $0 = "\(error), \(bytes.count) bytes" }
                }
            }
        }) { server, port in
            let s = try TestSocket.connect(port: port)
            try s.writeAll([1, 2, 3])
            usleep(20_000)
            s.reset()
            XCTAssertTrue(eventually(.seconds(5)) { !outcome.get.isEmpty })
            XCTAssertEqual(outcome.get, "closed, 0 bytes")
        }
    }

    /// Two tasks of one connection wait for room at once: both are resumed and both writes go out
    /// (each waiting writer used to take the other's place, leaving it suspended for good).
    func testTwoWritersWaitingForRoomOnOneConnectionBothFinish() async throws {
        var c = config(.pooled, .bufferRing)
        c.maxOutputBytesPerConnection = 64 << 10
        let finished = Locked(0)
        try await withAsyncServer(c, body: { connection in
            for await _ in connection.inbound { break }  // the go: then two writers at once
            await withTaskGroup(of: Void.self) { group in
                for w in 0..<2 {
                    group.addTask {
                        let block = [UInt8](repeating: UInt8(w), count: 16 << 10)
                        for _ in 0..<32 { try? await connection.outbound.write(block) }
                        finished.with { $0 += 1 }
                    }
                }
            }
        }) { server, port in
            let s = try TestSocket.connect(port: port)
            defer { s.close() }
            s.setTimeout(seconds: 10)
            try s.writeAll([0])
            usleep(200_000)  // let both writers meet the bound and wait
            let total = 2 * 32 * (16 << 10)
            XCTAssertEqual(try s.readExactly(total).count, total)
            XCTAssertTrue(eventually(.seconds(5)) { finished.get == 2 }, "both writers finished: \(finished.get)")
        }
    }

    /// A serial executor on a thread of its own, for an actor that is not a default one (as the
    /// main actor is not).
    final class ThreadExecutor: SerialExecutor, @unchecked Sendable {  // `jobs` and `stopped` are guarded by `condition`
        private let condition = NSCondition()
        private var jobs: [UnownedJob] = []
        private var stopped = false
        init() { Thread { [self] in loop() }.start() }
        func enqueue(_ job: consuming ExecutorJob) {
            let job = UnownedJob(job)
            condition.lock()
            jobs.append(job)
            condition.signal()
            condition.unlock()
        }
        func stop() {
            condition.lock()
            stopped = true
            condition.signal()
            condition.unlock()
        }
        private func loop() {
            while true {
                condition.lock()
                while jobs.isEmpty && !stopped { condition.wait() }
                if jobs.isEmpty { condition.unlock(); return }
                let job = jobs.removeFirst()
                condition.unlock()
                job.runSynchronously(on: asUnownedSerialExecutor())
            }
        }
    }

    /// Serves a connection from its methods, isolated to its own executor's thread.
    actor Relay {
        let executor: ThreadExecutor
        init(_ executor: ThreadExecutor) { self.executor = executor }
        nonisolated var unownedExecutor: UnownedSerialExecutor { executor.asUnownedSerialExecutor() }
        func pump(_ connection: AsyncConnection) async throws {
            for await chunk in connection.inbound { try await connection.outbound.write(chunk) }
        }
    }

    /// A connection served from an actor with its own executor (the caller is not on the ring):
    /// the calls hop to the ring and back, and the echo is whole (they used to run on the actor's
    /// thread, find themselves off the ring and report the input ended).
    func testAConnectionServedFromAnActorWithItsOwnExecutorEchoes() async throws {
        let executor = ThreadExecutor()
        defer { executor.stop() }
        try await withAsyncServer(config(.pooled, .bufferRing), body: { connection in
            try await Relay(executor).pump(connection)
        }) { server, port in
            let bytes = patternBytes(seed: 9, count: 200_000)
            XCTAssertTrue(try Self.roundTrip(port: port, bytes) == bytes)
        }
    }

    /// A ring that fails ends its connections: every task's inbound ends, serve throws the
    /// failure, and nothing waits for good.
    func testARingFailureEndsEveryConnectionsTask() async throws {
        var c = config(.pooled, .bufferRing)
        c.threads = 1
        let running = Locked(0)
        let ended = Locked(0)
        let server = AsyncServer(configuration: c)
        let serving = Task {
            try await server.serve { connection in
                running.with { $0 += 1 }
                defer { ended.with { $0 += 1 } }
                for await chunk in connection.inbound { try await connection.outbound.write(chunk) }
            }
        }
        let port = try await server.listeningAddress.port
        var clients: [TestSocket] = []
        for _ in 0..<20 { clients.append(try TestSocket.connect(port: port)) }
        defer { for s in clients { s.close() } }
        XCTAssertTrue(eventually(.seconds(5)) { running.get == 20 })
        server.injectEnterFailure(ring: 0, .invalidArgument)
        do {
            try await serving.value
            XCTFail("serve returns the ring's failure")
        } catch {
            XCTAssertNotNil(error as? ServerError, "\(error)")
        }
        XCTAssertEqual(ended.get, 20, "every connection's task ended")
    }

    // MARK: Order and cancellation

    /// A write through the connection's handle, then the end of the body: the implicit close comes
    /// after the write (it used to overtake it, and the client read nothing).
    func testAHandleWriteThenTheEndOfTheBodySendsTheWriteBeforeTheClose() async throws {
        for (mode, receive) in Self.variants {
            try await withAsyncServer(config(mode, receive), body: { connection in
                _ = await connection.handle.write("bye\n")
            }) { server, port in
                let s = try TestSocket.connect(port: port)
                defer { s.close() }
                s.setTimeout(seconds: 5)
                XCTAssertEqual(try s.readToEnd(), Array("bye\n".utf8), "\(mode)/\(receive)")
            }
        }
    }

    /// A child task iterating a silent connection's input is cancelled: its iteration ends, and
    /// the body returns (it used to wait until the peer sent something).
    func testCancellingATaskThatIteratesTheInputEndsTheIteration() async throws {
        let ended = Locked(0)
        try await withAsyncServer(config(.pooled, .bufferRing), body: { connection in
            await withTaskGroup(of: Void.self) { group in
                group.addTask {
                    for await _ in connection.inbound {}
                    ended.with { $0 += 1 }
                }
                try? await Task.sleep(for: .milliseconds(50))
                group.cancelAll()
            }
            try await connection.outbound.write("done\n")
        }) { server, port in
            let s = try TestSocket.connect(port: port)  // says nothing
            defer { s.close() }
            s.setTimeout(seconds: 5)
            XCTAssertEqual(try s.readToEnd(), Array("done\n".utf8), "the body went on after the cancel")
            XCTAssertEqual(ended.get, 1)
        }
    }

    /// A write waiting for room on a connection whose peer never reads ends when its task is
    /// cancelled: `outbound.write` throws, `ConnectionHandle.write` returns without queuing.
    func testCancellingAWriteThatWaitsForRoomEndsIt() async throws {
        var c = config(.pooled, .bufferRing)
        c.maxOutputBytesPerConnection = 64 << 10
        let outcomes = Locked<[String]>([])
        try await withAsyncServer(c, body: { connection in
            let block = [UInt8](repeating: 7, count: 16 << 10)
            let handle = connection.handle
            await withTaskGroup(of: Void.self) { group in
                group.addTask {
                    do {
                        while true { try await connection.outbound.write(block) }
                    } catch {
                        outcomes.with { $0.append("outbound: \(error)") }
                    }
                }
                group.addTask {
                    while await handle.write(block) == .queued {}
                    outcomes.with { $0.append("handle: \(Task.isCancelled)") }
                }
                try? await Task.sleep(for: .milliseconds(300))  // both wait for room by now
                group.cancelAll()
            }
        }) { server, port in
            let s = try nonReadingClient(port: port)
            defer { s.reset() }
            XCTAssertTrue(eventually(.seconds(5)) { outcomes.get.count == 2 }, "both writes ended: \(outcomes.get)")
            XCTAssertEqual(Set(outcomes.get), ["outbound: cancelled", "handle: true"])
        }
    }
}
