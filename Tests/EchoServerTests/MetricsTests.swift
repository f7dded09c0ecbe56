import SocketPool
import URing
import EchoServer
import Metrics
import MetricsTestKit
import TestSupport
import XCTest

/// With a swift-metrics backend bootstrapped, the server reports its counters there.
final class MetricsTests: ServerTestCase {
    // The metrics system can be bootstrapped once per process; only this test does it.
    static let metrics: TestMetrics = {
        let m = TestMetrics()
        MetricsSystem.bootstrap(m)
        return m
    }()

    func testCountersReachTheBootstrappedBackend() throws {
        let metrics = Self.metrics
        try withServer(config(.pooled, .bufferRing)) { server, port in
            for i in 0..<3 {
                XCTAssertEqual(try Self.roundTrip(port: port, [UInt8(i), 1, 2, 3]), [UInt8(i), 1, 2, 3])
            }
            // Metrics are reported on housekeeping ticks (50 ms in tests).
            XCTAssertTrue(eventually {
                metrics.counterTotal(label: "uring_echo_closed_total") == 3
                    && metrics.counterTotal(label: "uring_echo_bytes_out_total") == 12
            })
            XCTAssertEqual(metrics.counterTotal(label: "uring_echo_accepted_total"), 3)
            XCTAssertEqual(metrics.counterTotal(label: "uring_echo_bytes_in_total"), 12)
            XCTAssertGreaterThan(metrics.counterTotal(label: "uring_echo_completions_total"), 0)
            XCTAssertEqual(try metrics.expectGauge("uring_echo_active_connections", [("ring", "0")]).lastValue, 0)
            _ = server
        }
    }
}
