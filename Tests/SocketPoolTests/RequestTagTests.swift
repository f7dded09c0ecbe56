import URing
import SocketPool
import TestSupport
import XCTest

final class RequestTagTests: XCTestCase {
    func testTagRoundTripsOverTheWholeBitRange() {
        let indices: [UInt32] = [0, 1, 2, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFE, 0xFFFF_FFFF, 0x1234_5678]
        let generations: [UInt32] = [0, 1, 0x7F_FFFF, 0x80_0000, 0xFF_FFFE, 0xFF_FFFF]
        for index in indices {
            for generation in generations {
                for k in 0...255 {
                    let kind = UInt8(k)
                    let tag = RequestTag(Lease(index: index, generation: generation), kind: kind)
                    let back = RequestTag(rawValue: tag.rawValue)
                    XCTAssertEqual(back.lease.index, index)
                    XCTAssertEqual(back.lease.generation, generation)
                    XCTAssertEqual(back.kind, kind)
                }
            }
        }
        // Documented layout: index in the top 32 bits, generation in 8...31, kind in 0...7.
        XCTAssertEqual(
            RequestTag(Lease(index: 0xAABB_CCDD, generation: 0x11_2233), kind: 4).rawValue, 0xAABB_CCDD_1122_3304)
        // Only 24 generation bits are kept: a wider value cannot spill into the index.
        let wide = RequestTag(Lease(index: 5, generation: 0xFFFF_FFFF), kind: 3)
        XCTAssertEqual(wide.lease.index, 5)
        XCTAssertEqual(wide.lease.generation, 0xFF_FFFF)
    }

    func testGenerationWrapsWithin24Bits() {
        XCTAssertEqual(Lease.nextGeneration(after: 0), 1)
        XCTAssertEqual(Lease.nextGeneration(after: 0xFF_FFFE), 0xFF_FFFF)
        XCTAssertEqual(Lease.nextGeneration(after: 0xFF_FFFF), 0)
    }

    func testContextSlabHandlesGenerationWrapAround() {
        var slab = ContextSlab(capacity: 1, empty: 0, initialGeneration: 0xFF_FFFE)
        var previous: RequestTag? = nil
        for expected: UInt32 in [0xFF_FFFE, 0xFF_FFFF, 0, 1] {
            let tag = slab.acquire(kind: 1, 0)!
            XCTAssertEqual(tag.lease.generation, expected)
            XCTAssertNotNil(slab.resolve(tag))
            if let previous { XCTAssertNil(slab.resolve(previous), "the previous incarnation is stale") }
            XCTAssertTrue(slab.release(tag))
            previous = tag
        }
    }

    func testContextSlabAcquireReleaseIsLIFOWithStableAddressesAndBoundedCapacity() {
        var slab = ContextSlab(capacity: 3, empty: 0)
        let a = slab.acquire(kind: 1, 7)!
        let b = slab.acquire(kind: 2, 8)!
        let c = slab.acquire(kind: 3, 9)!
        XCTAssertNil(slab.acquire(kind: 4, 10), "a full slab refuses")
        XCTAssertEqual(slab.statistics.misses, 1)
        XCTAssertEqual(slab.statistics.inUse, 3)
        let address = slab.resolve(b)
        XCTAssertEqual(slab.resolve(a)?.pointee, 7)
        XCTAssertEqual(slab.resolve(b)?.pointee, 8)
        XCTAssertTrue(slab.release(b))
        XCTAssertFalse(slab.release(b), "a double release is refused")
        let d = slab.acquire(kind: 2, 11)!
        XCTAssertEqual(d.lease.index, b.lease.index, "LIFO: the context freed last is reused first")
        XCTAssertEqual(slab.resolve(d), address, "contexts do not move")
        XCTAssertEqual(slab.resolve(d)?.pointee, 11)
        XCTAssertNotEqual(d.lease.generation, b.lease.generation)
        XCTAssertTrue(slab.release(a))
        XCTAssertTrue(slab.release(c))
        XCTAssertTrue(slab.release(d))
        XCTAssertEqual(slab.statistics.inUse, 0)
        XCTAssertEqual(slab.statistics.highWater, 3)
        XCTAssertEqual(slab.available, 3)
    }

    func testResolveRefusesATagWhoseKindDoesNotMatch() {
        var slab = ContextSlab(capacity: 1, empty: 0)
        let tag = slab.acquire(kind: 1, 0)!
        let forged = RequestTag(tag.lease, kind: 2)
        XCTAssertNil(slab.resolve(forged))
        XCTAssertEqual(slab.statistics.staleCompletions, 1)
    }
}
