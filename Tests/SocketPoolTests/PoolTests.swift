import URing
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

    func testSlotPoolLeasesLIFOWithGenerationsAndRefusesWhenFull() throws {
        let ring = try Ring()
        var pool = try SlotPool(ring: ring, capacity: 4)
        var leases: [Lease] = []
        for _ in 0..<4 { leases.append(try XCTUnwrap(pool.acquire())) }
        XCTAssertEqual(Set(leases.map(\.index)), [0, 1, 2, 3], "every slot handed out once")
        XCTAssertNil(pool.acquire(), "a full table refuses")
        XCTAssertEqual(pool.statistics.misses, 1)
        XCTAssertEqual(pool.statistics.inUse, 4)
        XCTAssertTrue(pool.release(leases[2]))
        XCTAssertFalse(pool.release(leases[2]), "a double release is refused")
        let again = try XCTUnwrap(pool.acquire())
        XCTAssertEqual(again.index, leases[2].index, "LIFO: the slot freed last goes out first")
        XCTAssertNotEqual(again.generation, leases[2].generation, "a new lease has a new generation")
        XCTAssertFalse(pool.isCurrent(leases[2]))
        XCTAssertNil(pool.resolve(RequestTag(leases[2], kind: 1)), "the old lease's tag is stale")
        XCTAssertEqual(pool.statistics.staleCompletions, 1)
        do {
            _ = try SlotPool(ring: ring, capacity: 0)
            XCTFail("zero slots must be refused")
        } catch {
            XCTAssertEqual(error.errno, .invalidArgument, "zero slots is a named error, not a trap")
        }
    }

    func testSlotsServeOneAcceptAfterAnotherThroughTheRing() throws {
        // Direct accepts into slots the pool chose, 200 times through 2 slots: the table is reused,
        // the process's descriptor count stays flat.
        let ring = try Ring()
        var pool = try SlotPool(ring: ring, capacity: 2)
        let listener = try Sockets.listen(on: SocketAddress(host: "127.0.0.1", port: 0)!)
        defer { _ = try? Sockets.close(listener) }
        let port = try Sockets.localAddress(listener).port
        let baseline = openDescriptorCount()
        for i in 0..<200 {
            let lease = try XCTUnwrap(pool.acquire())
            try ring.prepareAccept(.fd(listener), into: .slot(lease.index), tag: 1)
            let client = try TestSocket.connect(port: port)
            try ring.submitAndWait(1)
            var accepted: Int32 = -1
            ring.forEachCompletion { accepted = $0.result }
            XCTAssertEqual(accepted, 0, "accept \(i) went into the slot")
            try client.writeAll([UInt8(i & 0xFF)])
            try ring.prepareRecv(.slot(lease.index), into: UnsafeMutableRawBufferPointer(start: nil, count: 0), tag: 2)
            try ring.prepareClose(.slot(lease.index), tag: 3)
            try ring.submitAndWait(2)
            var results: [UInt64: Int32] = [:]
            while results.count < 2 {
                ring.forEachCompletion { results[$0.tag] = $0.result }
                if results.count < 2 { try ring.submitAndWait(1) }
            }
            XCTAssertEqual(results[3], 0, "close_direct of slot \(lease.index)")
            XCTAssertTrue(pool.release(lease))
            client.close()
        }
        XCTAssertLessThanOrEqual(pool.statistics.highWater, 1)
        XCTAssertEqual(pool.statistics.inUse, 0)
        XCTAssertEqual(openDescriptorCount(), baseline, "slots are not process descriptors")
    }

    /// A record of the owner's: the pool's part and a counter.
    struct Record: SessionRecord {
        let session: PooledSession
        var uses = 0
        init(_ session: PooledSession) { self.session = session }
    }

    func testSessionPoolHandsOutRecordsAndRefusesStaleLeases() {
        for mode in PoolMode.allCases {
            var pool = SessionPool<Record>(mode: mode, capacity: 2, bufferSize: 128)
            let a = pool.acquire(file: .fd(10))!
            let b = pool.acquire(file: .slot(3), slot: Lease(index: 3, generation: 5))!
            XCTAssertNil(pool.acquire(file: .fd(12)), "\(mode): capacity is enforced")
            XCTAssertEqual(pool.statistics.misses, 1)
            XCTAssertEqual(a.pointee.session.buffer.count, 128)
            XCTAssertEqual(a.pointee.session.file, .fd(10))
            XCTAssertNil(a.pointee.session.slot)
            XCTAssertEqual(b.pointee.session.slot, Lease(index: 3, generation: 5))
            XCTAssertEqual(b.pointee.session.epoch, a.pointee.session.epoch + 1, "epochs count sessions")
            a.pointee.uses = 7
            let oldLease = a.pointee.session.lease
            let oldEpoch = a.pointee.session.epoch
            XCTAssertEqual(pool.resolve(oldLease)?.pointee.uses, 7)
            XCTAssertTrue(pool.release(a))
            XCTAssertNil(pool.resolve(oldLease), "\(mode): the old lease is stale")
            XCTAssertEqual(pool.statistics.staleCompletions, 1)
            let c = pool.acquire(file: .fd(13))!
            XCTAssertEqual(c.pointee.session.lease.index, oldLease.index, "LIFO: the place freed last")
            XCTAssertNotEqual(c.pointee.session.lease.generation, oldLease.generation)
            XCTAssertGreaterThan(c.pointee.session.epoch, oldEpoch, "an epoch never repeats")
            XCTAssertEqual(c.pointee.uses, 0, "a new record, not the old one's state")
            XCTAssertEqual(pool.resolve(c.pointee.session.lease)?.pointee.session.file, .fd(13))
            XCTAssertNotNil(pool.record(at: c.pointee.session.index))
            XCTAssertTrue(pool.release(b))
            XCTAssertNil(pool.record(at: 1 - c.pointee.session.index), "a free place has no record")
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
