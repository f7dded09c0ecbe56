import Glibc
import SocketPool
import TestSupport
import XCTest

final class PoolTests: XCTestCase {
    override func setUpWithError() throws {
        if let reason = ioUringUnavailableReason() { throw XCTSkip(reason) }
    }

    /// One client exchange: connect, send `size` pattern bytes, read them back, close.
    /// Returns false on any mismatch or error.
    static func exchange(port: UInt16, seed: UInt64, size: Int = 100) -> Bool {
        guard let s = try? TestSocket.connect(port: port) else { return false }
        defer { s.close() }
        let bytes = patternBytes(seed: seed, count: size)
        guard (try? s.writeAll(bytes)) != nil, let back = try? s.readExactly(size) else { return false }
        return back == bytes
    }

    func testThousandSequentialAcceptsReuseEightSlotsWithoutGrowingDescriptors() throws {
        let driver = try MiniEchoDriver(mode: .pooled, slots: 8, sessions: 8)
        let port = driver.port
        // Warm up once so lazily opened descriptors (if any) are counted in the baseline.
        let warm = spawn { _ = PoolTests.exchange(port: port, seed: 0) }
        try driver.run { driver.closed == 1 }
        XCTAssertTrue(warm(.seconds(5)))
        let baseline = openDescriptorCount()
        final class Box: @unchecked Sendable { var failures = 0 }  // written by the client thread only, read after join
        let box = Box()
        let total = 1000
        let client = spawn {
            for i in 0..<total where !PoolTests.exchange(port: port, seed: UInt64(i + 1)) { box.failures += 1 }
        }
        try driver.run(timeout: .seconds(60)) { driver.closed == total + 1 }
        XCTAssertTrue(client(.seconds(10)))
        XCTAssertEqual(box.failures, 0, "every connection echoed its own bytes")
        XCTAssertEqual(driver.closed, total + 1)
        XCTAssertEqual(driver.slotAccepts, total + 1, "every accept went into a pool slot")
        XCTAssertLessThanOrEqual(driver.slotsUsed.count, 8)
        // The accept re-armed after the last close holds one leased slot.
        XCTAssertTrue(driver.acceptArmed)
        XCTAssertEqual(driver.slots.statistics.hits, UInt64(total + 2))
        XCTAssertEqual(driver.slots.statistics.inUse, 1)
        XCTAssertEqual(driver.unexpected, 0)
        XCTAssertEqual(openDescriptorCount(), baseline, "slots are not process descriptors: the fd count is flat")
    }

    func testExhaustionWithFallbackToDescriptorServesEveryClient() throws {
        let driver = try MiniEchoDriver(mode: .pooled, slots: 4, sessions: 32, policy: .fallbackToDescriptor)
        let port = driver.port
        let clients = 12
        // Every client connects first and holds its connection until all are connected, so more
        // connections are live at once than there are slots.
        final class Box: @unchecked Sendable {
            var ok = 0
            var mutex = pthread_mutex_t()
        }
        let box = Box()
        pthread_mutex_init(&box.mutex, nil)
        let sockets = try (0..<clients).map { _ in try TestSocket.connect(port: port) }
        try driver.run { driver.accepted == clients }
        XCTAssertEqual(driver.slotAccepts, 4)
        XCTAssertEqual(driver.descriptorAccepts, clients - 4)
        // One more accept is armed, already decided as a descriptor accept: the counters include it.
        XCTAssertTrue(driver.acceptArmed)
        XCTAssertEqual(driver.slots.fallbacks, UInt64(clients - 4 + 1))
        XCTAssertEqual(driver.slots.statistics.misses, UInt64(clients - 4 + 1))
        let wait = spawn {
            for (i, s) in sockets.enumerated() {
                let bytes = patternBytes(seed: UInt64(100 + i), count: 256)
                if (try? s.writeAll(bytes)) != nil, (try? s.readExactly(256)) == bytes {
                    pthread_mutex_lock(&box.mutex); box.ok += 1; pthread_mutex_unlock(&box.mutex)
                }
                s.close()
            }
        }
        try driver.run { driver.closed == clients }
        XCTAssertTrue(wait(.seconds(10)))
        XCTAssertEqual(box.ok, clients, "fallback connections are served like slot ones")
        // The accept armed last was decided while the pool was empty: a descriptor accept, no slot.
        XCTAssertEqual(driver.slots.statistics.inUse, 0)
        XCTAssertEqual(driver.sessions.statistics.inUse, 0)
        XCTAssertEqual(driver.unexpected, 0)
    }

    func testExhaustionWithBackpressurePausesAcceptingAndResumesWhenSlotsFree() throws {
        let driver = try MiniEchoDriver(mode: .pooled, slots: 4, sessions: 32, policy: .backpressure)
        let port = driver.port
        let clients = 12
        // All clients connect (the kernel completes the handshakes into the backlog).
        let sockets = try (0..<clients).map { _ in try TestSocket.connect(port: port) }
        try driver.run(timeout: .milliseconds(500)) { driver.accepted == clients }
        XCTAssertEqual(driver.accepted, 4, "only as many accepted as there are slots")
        XCTAssertTrue(driver.paused)
        XCTAssertEqual(driver.slots.pauseEpisodes, 1, "one pause per exhaustion episode, no spinning")
        XCTAssertEqual(driver.descriptorAccepts, 0)
        // Serve and close clients one by one; each freed slot lets one more in.
        final class Box: @unchecked Sendable { var ok = 0 }
        let box = Box()
        let wait = spawn {
            for (i, s) in sockets.enumerated() {
                let bytes = patternBytes(seed: UInt64(200 + i), count: 512)
                if (try? s.writeAll(bytes)) != nil, (try? s.readExactly(512)) == bytes { box.ok += 1 }
                s.close()
            }
        }
        try driver.run { driver.closed == clients }
        XCTAssertTrue(wait(.seconds(10)))
        XCTAssertEqual(box.ok, clients, "clients waiting in the backlog were served, none dropped")
        XCTAssertEqual(driver.accepted, clients)
        XCTAssertEqual(driver.slotAccepts, clients)
        XCTAssertGreaterThanOrEqual(driver.slots.pauseEpisodes, 1)
        XCTAssertEqual(driver.slots.statistics.inUse, 1, "only the armed accept's slot")
        XCTAssertEqual(driver.slots.statistics.highWater, 4)
        XCTAssertEqual(driver.unexpected, 0)
    }

    func testSessionPoolRecyclesOnlyAtZeroInFlight() {
        for mode in PoolMode.allCases {
            var pool = SessionPool(mode: mode, capacity: 2, bufferSize: 128)
            let a = pool.acquire(file: .fd(10))!
            let b = pool.acquire(file: .fd(11))!
            XCTAssertNil(pool.acquire(file: .fd(12)), "\(mode): capacity is enforced")
            let s = pool.resolve(a)!
            XCTAssertEqual(s.pointee.buffer.count, 128)
            XCTAssertEqual(s.pointee.state, .open)
            s.pointee.inFlight = 1
            XCTAssertFalse(pool.release(a), "\(mode): not recycled while a request is in flight")
            XCTAssertEqual(pool.refusedReleases, 1)
            s.pointee.inFlight = 0
            XCTAssertTrue(pool.release(a))
            XCTAssertNil(pool.resolve(a), "\(mode): the old handle is stale")
            let c = pool.acquire(file: .fd(13))!
            XCTAssertEqual(c.index, a.index)
            XCTAssertNotEqual(c.generation, a.generation)
            XCTAssertEqual(pool.resolve(c)?.pointee.file, .fd(13))
            XCTAssertTrue(pool.release(b))
            XCTAssertTrue(pool.release(c))
            XCTAssertEqual(pool.statistics.inUse, 0)
        }
    }

    func testClientSocketReconnectsThousandTimesWithOneSocketCall() throws {
        let ring = try Ring()
        var pool = ClientSocketPool(capacity: 4)
        let lfd = try Sockets.listen(on: SocketAddress(host: "127.0.0.1", port: 0)!, backlog: 16)
        defer { close(lfd) }
        let address = SocketAddress(host: "127.0.0.1", port: try Sockets.localAddress(lfd).port)!
        var tag: UInt64 = 0
        func wait(_ tag: UInt64) throws -> Completion {
            let deadline = ContinuousClock.now + .seconds(5)
            var found: Completion?
            while found == nil && ContinuousClock.now < deadline {
                try ring.submitAndWait(1, timeout: .milliseconds(50))
                ring.forEachCompletion { if $0.tag == tag { found = $0 } }
            }
            return try XCTUnwrap(found)
        }
        var descriptors = Set<Int32>()
        var resets = 0
        for i in 0..<1000 {
            let fd = try pool.acquire()
            descriptors.insert(fd)
            tag += 1
            try ring.prepareConnect(.fd(fd), to: address, tag: tag)
            XCTAssertEqual(try wait(tag).result, 0, "connect \(i)")
            let server = accept(lfd, nil, nil)
            XCTAssertGreaterThanOrEqual(server, 0)
            // Exchange: the client sends through the ring, the server echoes with plain calls.
            let bytes = patternBytes(seed: UInt64(i), count: 32)
            tag += 1
            try bytes.withUnsafeBytes { try ring.prepareSend(.fd(fd), from: $0, tag: tag) }
            XCTAssertEqual(try wait(tag).result, 32)
            let peer = TestSocket(fd: server)
            peer.setTimeout(seconds: 5)
            let got = try peer.readExactly(32)
            try peer.writeAll(got)
            let echoed = UnsafeMutableRawBufferPointer.allocate(byteCount: 32, alignment: 8)
            tag += 1
            try ring.prepareRecv(.fd(fd), into: echoed, flags: Int32(MSG_WAITALL), tag: tag)
            XCTAssertEqual(try wait(tag).result, 32)
            XCTAssertEqual(Array(echoed), bytes)
            echoed.deallocate()
            // Disconnect through the ring and put the socket back for the next round.
            tag += 1
            try pool.prepareDisconnect(fd, on: ring, tag: tag)
            XCTAssertEqual(try wait(tag).result, 0, "disconnect \(i)")
            pool.release(fd)
            // The abortive disconnect reaches the server as a reset, not a FIN.
            var one: UInt8 = 0
            if recv(server, &one, 1, 0) < 0 && Errno.current == .connectionReset { resets += 1 }
            close(server)
        }
        XCTAssertEqual(pool.socketsCreated, 1, "socket() was called once for 1,000 connections")
        XCTAssertEqual(descriptors.count, 1)
        XCTAssertEqual(pool.statistics.hits, 999)
        XCTAssertEqual(resets, 1000, "every peer saw RST (no TIME_WAIT on either side)")
    }

    func testUnpooledClientSocketsCreateOneSocketPerConnection() throws {
        var pool = ClientSocketPool(capacity: 4, reuse: false)
        for _ in 0..<5 { pool.release(try pool.acquire()) }
        XCTAssertEqual(pool.socketsCreated, 5)
        XCTAssertEqual(pool.socketsClosed, 5)
        XCTAssertEqual(pool.idle, 0)
    }
}
