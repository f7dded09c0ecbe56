import Glibc
import SocketPool
import TestSupport
import XCTest

final class AllocationTests: XCTestCase {
    override func setUpWithError() throws {
        if let reason = ioUringUnavailableReason() { throw XCTSkip(reason) }
        try XCTSkipUnless(allocationCounterAvailable, "the malloc counter is left out under sanitizers")
    }

    /// Serves `warmup + measured` sequential connections (accept, echo 64 bytes, close) and returns
    /// the heap allocations the serving thread made per connection over the measured ones. Clients
    /// run on another thread, so their allocations are not counted (the counter is per thread).
    func allocationsPerConnection(_ mode: PoolMode, warmup: Int = 100, measured: Int = 1000) throws -> Double {
        let driver = try MiniEchoDriver(mode: mode, slots: 8, sessions: 8)
        driver.recordSlots = false  // the Set insert would allocate on the serving thread
        let port = driver.port
        var start: UInt64 = 0
        var end: UInt64 = 0
        driver.onClosed = { closed in
            if closed == warmup { start = threadAllocations() }
            if closed == warmup + measured { end = threadAllocations() }
        }
        final class Box: @unchecked Sendable { var failures = 0 }
        let box = Box()
        let client = spawn {
            for i in 0..<(warmup + measured) where !PoolTests.exchange(port: port, seed: UInt64(i), size: 64) {
                box.failures += 1
            }
        }
        try driver.run(timeout: .seconds(60)) { driver.closed == warmup + measured }
        XCTAssertTrue(client(.seconds(10)))
        XCTAssertEqual(box.failures, 0)
        XCTAssertEqual(driver.unexpected, 0)
        XCTAssertEqual(driver.closed, warmup + measured)
        return Double(end - start) / Double(measured)
    }

    func testPooledModeAllocatesNothingPerConnectionAfterWarmUp() throws {
        let pooled = try allocationsPerConnection(.pooled)
        let unpooled = try allocationsPerConnection(.unpooled)
        print("allocations per connection (1,000 accept/echo/close cycles): pooled \(pooled), unpooled \(unpooled)")
        XCTAssertEqual(pooled, 0, "pooled: zero heap allocations per connection")
        // Two per connection (session + buffer); the window's edges may shift one accept across it.
        XCTAssertGreaterThanOrEqual(unpooled, 1.99, "unpooled: a session and a buffer per connection")
    }
}
