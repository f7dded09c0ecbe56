import Glibc
import TestSupport
import URing
import XCTest

final class RingSetupTests: RingTestCase {
    func testDefaultSetupGrantsPreferredFlagsAndReportsThem() throws {
        let ring = try Ring()
        // The first entry of the automatic chain is SINGLE_ISSUER|DEFER_TASKRUN|SUBMIT_ALL; whatever
        // was granted must be one of the chain's entries plus CQSIZE.
        let granted = ring.setupFlags.subtracting(.cqSize)
        XCTAssertTrue(RingOptions.automaticFlags.contains(granted), "granted \(ring.setupFlags)")
        XCTAssertTrue(ring.setupFlags.contains(.cqSize))
        XCTAssertEqual(ring.completionEntries, ring.submissionEntries * 4)
        XCTAssertTrue(ring.features.contains(.noDrop))
        print("ring setup granted: \(ring.setupFlags); refused: \(ring.refusedSetups.map { "\($0.flags)=\($0.errno.name)" })")
    }

    func testRefusedFlagSetFallsBackToNextInChain() throws {
        // DEFER_TASKRUN without SINGLE_ISSUER is invalid, and bit 31 is unknown: both EINVAL.
        let bogus = SetupFlags(rawValue: 1 << 31)
        let ring = try Ring(RingOptions(entries: 8, flagPreference: [[.deferTaskrun], [bogus], [.coopTaskrun], []]))
        XCTAssertEqual(ring.refusedSetups.count, 2)
        XCTAssertEqual(ring.refusedSetups[0].flags, [.deferTaskrun])
        XCTAssertEqual(ring.refusedSetups[0].errno, .invalidArgument)
        XCTAssertEqual(ring.refusedSetups[1].errno, .invalidArgument)
        XCTAssertTrue(ring.setupFlags.contains(.coopTaskrun))
        XCTAssertFalse(ring.setupFlags.contains(.deferTaskrun))
        // The fallback ring works.
        try ring.prepareNop(tag: 7)
        let c = try completion(ring, tag: 7)
        XCTAssertEqual(c.result, 0)
    }

    func testSetupFailsWithNamedErrorWhenEveryFlagSetIsRefused() {
        do {
            _ = try Ring(RingOptions(entries: 8, flagPreference: [[.deferTaskrun]]))
            XCTFail("setup with DEFER_TASKRUN alone must be refused")
        } catch {
            XCTAssertEqual(error.errno, .invalidArgument)
            XCTAssertEqual(error.operation, "io_uring_queue_init_params")
            XCTAssertTrue(error.description.contains("EINVAL"), error.description)
        }
    }

    func testProbeReportsTheOpcodesThisProjectUses() throws {
        let ring = try Ring()
        let probe = try ring.probe()
        for op in [Opcode.nop, .accept, .connect, .recv, .send, .close, .shutdown, .asyncCancel, .timeout,
                   .linkTimeout, .msgRing] {
            XCTAssertTrue(probe.supports(op), "kernel lacks \(op)")
        }
        XCTAssertFalse(probe.supports(Opcode(rawValue: 250)))
        XCTAssertGreaterThan(probe.opcodeCount, 40)
    }

    func testTenThousandNopsCompleteWithEveryTagSeenOnce() throws {
        let ring = try Ring(RingOptions(entries: 128))
        let total = 10_000
        for i in 0..<total { try ring.prepareNop(tag: UInt64(i) | 0xA000_0000_0000_0000) }
        var seen = [Int](repeating: 0, count: total)
        var harvested = 0
        let clock = ContinuousClock()
        let deadline = clock.now + .seconds(10)
        while harvested < total && clock.now < deadline {
            try ring.submitAndWait(1, timeout: .milliseconds(100))
            harvested += ring.forEachCompletion { c in
                XCTAssertEqual(c.result, 0)
                XCTAssertEqual(c.tag >> 60, 0xA)
                seen[Int(c.tag & 0xFFFF_FFFF)] += 1
            }
        }
        XCTAssertEqual(harvested, total)
        XCTAssertEqual(seen.filter { $0 != 1 }.count, 0, "every tag exactly once")
        XCTAssertGreaterThan(ring.statistics.submitsForFullQueue, 0, "the 128-entry SQ filled and was flushed")
        XCTAssertEqual(ring.statistics.completions, UInt64(total))
    }

    func testSubmitAndWaitTimeoutReturnsWhenNothingCompletes() throws {
        let ring = try Ring()
        let clock = ContinuousClock()
        let start = clock.now
        let submitted = try ring.submitAndWait(1, timeout: .milliseconds(30))
        let elapsed = clock.now - start
        XCTAssertEqual(submitted, 0)
        XCTAssertGreaterThanOrEqual(elapsed, .milliseconds(25))
        XCTAssertLessThan(elapsed, .seconds(2))
        XCTAssertEqual(ring.forEachCompletion { _ in XCTFail("no completion expected") }, 0)
    }

    func testNegativeResultIsAnErrorNamingOperationAndErrno() {
        let c = Completion(tag: 1, result: -ECONNRESET, flags: 0)
        XCTAssertEqual(c.error, .connectionReset)
        XCTAssertThrowsError(try c.check("recv")) { error in
            XCTAssertEqual((error as! URingError).description, "recv failed: ECONNRESET (Connection reset by peer)")
        }
        XCTAssertEqual(try Completion(tag: 1, result: 5, flags: 0).check("recv"), 5)
        XCTAssertEqual(Errno(rawValue: 9999).name, "errno 9999")
    }

    func testCompletionFlagHelpers() {
        let c = Completion(tag: 0, result: 10, flags: 1 /* F_BUFFER */ | 2 /* F_MORE */ | (17 << 16))
        XCTAssertTrue(c.hasMore)
        XCTAssertTrue(c.hasBuffer)
        XCTAssertEqual(c.bufferID, 17)
        XCTAssertFalse(c.isNotification)
        let n = Completion(tag: 0, result: 0, flags: 8 /* F_NOTIF */)
        XCTAssertTrue(n.isNotification)
        XCTAssertNil(n.bufferID)
        XCTAssertFalse(n.hasMore)
        XCTAssertFalse(c.hasBufferMore)
        XCTAssertTrue(Completion(tag: 0, result: 10, flags: 1 | 16 /* F_BUF_MORE */).hasBufferMore)
    }
}
