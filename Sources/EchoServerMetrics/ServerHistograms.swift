import EchoServer
import Logging
import Metrics
import Prometheus
import URing

/// The server's completions-per-turn histograms, rendered in the Prometheus text format after the
/// exposition (a swift-metrics recorder would take a lock per loop turn; the loop counts into fixed
/// buckets instead, published once per tick). Set once the server exists.
final class ServerHistograms: Sendable {
    let source = PthreadLock<@Sendable () -> [TurnHistogram]>({ [] })

    func append(to buffer: inout [UInt8]) {
        let rings = source.withLock { $0 }()
        let name = "uring_echo_completions_per_turn"
        var text = "# HELP \(name) Completions harvested per completion-loop turn.\n# TYPE \(name) histogram\n"
        for (ring, histogram) in rings.enumerated() {
            var cumulative: UInt64 = 0
            for (bucket, bound) in TurnHistogram.upperBounds.enumerated() {
                cumulative &+= histogram[bucket]
                text += "\(name)_bucket{ring=\"\(ring)\",le=\"\(bound)\"} \(cumulative)\n"
            }
            text += "\(name)_bucket{ring=\"\(ring)\",le=\"+Inf\"} \(histogram.count)\n"
            text += "\(name)_sum{ring=\"\(ring)\"} \(histogram.sum)\n"
            text += "\(name)_count{ring=\"\(ring)\"} \(histogram.count)\n"
        }
        buffer.append(contentsOf: text.utf8)
    }
}
