import URing
import Glibc
import SocketPool
import TestSupport
import XCTest

final class StaleCompletionTests: XCTestCase {
    override func setUpWithError() throws {
        if let reason = ioUringUnavailableReason() { throw XCTSkip(reason) }
    }

    func harvest(_ ring: borrowing Ring, count: Int) throws -> [Completion] {
        try collectCompletions(ring, count: count)
    }

    /// Request kinds of these tests (the kind byte is the user's).
    static let nop: UInt8 = 1
    static let recv: UInt8 = 2
    static let cancel: UInt8 = 3

    func testNopCompletionForARecycledContextIsStaleAndNewOwnerSeesNothing() throws {
        let ring = try Ring()
        // Each context holds its owner's number.
        var slab = ContextSlab(capacity: 4, empty: 0)
        let old = slab.acquire(kind: Self.nop, 1)!
        try ring.prepareNop(tag: old.rawValue)
        try ring.submit()
        // Before the completion is harvested, the context is released and handed to a new owner.
        XCTAssertTrue(slab.release(old))
        let fresh = slab.acquire(kind: Self.nop, 2)!
        XCTAssertEqual(fresh.lease.index, old.lease.index, "same context, new incarnation")
        let completions = try harvest(ring, count: 1)
        XCTAssertEqual(completions.count, 1)
        var delivered = 0
        for c in completions {
            if let ctx = slab.resolve(RequestTag(rawValue: c.tag)) {
                delivered += 1
                ctx.pointee = 0  // what a wrong delivery would do to the new owner
            }
        }
        XCTAssertEqual(delivered, 0, "the late completion is not delivered")
        XCTAssertEqual(slab.statistics.staleCompletions, 1)
        XCTAssertEqual(slab.resolve(fresh)?.pointee, 2, "the new owner's context is untouched")
    }

    func testCancelledRecvArrivingAfterRecycleIsStale() throws {
        let ring = try Ring()
        var slab = ContextSlab(capacity: 4, empty: 0)
        let (a, b) = try TestSocket.pair()
        defer { a.close(); b.close() }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64, alignment: 8)
        defer { buffer.deallocate() }
        let recvTag = slab.acquire(kind: Self.recv, 9)!
        try ring.prepareRecv(.fd(b.fd), into: buffer, tag: recvTag.rawValue)
        try ring.submit()
        let cancelTag = slab.acquire(kind: Self.cancel, 0)!
        try ring.prepareCancel(recvTag.rawValue, tag: cancelTag.rawValue)
        // The session is torn down before the cancel's results are reaped: its context is reused.
        slab.release(recvTag)
        let reused = slab.acquire(kind: Self.recv, 10)!
        XCTAssertEqual(reused.lease.index, recvTag.lease.index)
        let completions = try harvest(ring, count: 2)
        var stale = 0
        var cancelled = 0
        for c in completions {
            let tag = RequestTag(rawValue: c.tag)
            guard let ctx = slab.resolve(tag) else {
                stale += 1
                XCTAssertEqual(c.error, .canceled)
                continue
            }
            XCTAssertEqual(tag.kind, Self.cancel)
            XCTAssertEqual(ctx.pointee, 0)
            XCTAssertEqual(c.result, 0)
            cancelled += 1
            slab.release(tag)
        }
        XCTAssertEqual(stale, 1)
        XCTAssertEqual(cancelled, 1)
        XCTAssertEqual(slab.statistics.staleCompletions, 1)
        XCTAssertEqual(slab.resolve(reused)?.pointee, 10)
    }

    func testCompletionForAnOldSlotLeaseIsStaleAfterTheSlotIsReused() throws {
        let ring = try Ring()
        var slots = try SlotPool(ring: ring, capacity: 4)
        let lease = slots.acquire()!
        let oldTag = RequestTag(lease, kind: Self.recv)
        try ring.prepareNop(tag: oldTag.rawValue)
        try ring.submit()
        XCTAssertTrue(slots.release(lease))
        let again = slots.acquire()!
        XCTAssertEqual(again.index, lease.index, "LIFO hands the same slot out again")
        XCTAssertNotEqual(again.generation, lease.generation)
        let completions = try harvest(ring, count: 1)
        XCTAssertEqual(completions.count, 1)
        XCTAssertNil(slots.resolve(RequestTag(rawValue: completions[0].tag)))
        XCTAssertEqual(slots.statistics.staleCompletions, 1)
        XCTAssertEqual(slots.resolve(RequestTag(again, kind: Self.recv)), again)
        XCTAssertFalse(slots.release(lease), "releasing the old lease again is refused")
        XCTAssertTrue(slots.isCurrent(again))
        print("stale completions seen: slot pool \(slots.statistics.staleCompletions)")
    }
}
