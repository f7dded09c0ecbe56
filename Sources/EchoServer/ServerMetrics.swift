import Metrics

// What the server reports to swift-metrics (per ring), and what it renders itself for the
// metrics endpoint.

/// A swift-metrics backend that shows a help text beside each metric (Prometheus's `# HELP`). The
/// server makes its counters and gauges through these calls when its factory has them, and through
/// the plain ones otherwise (the `EchoServerPrometheus` module has one over swift-prometheus).
public protocol MetricsFactoryWithHelp: MetricsFactory {
    /// The counter `label` with `dimensions`, described by `help`.
    func makeCounter(label: String, dimensions: [(String, String)], help: String) -> any CounterHandler
    /// The gauge (a recorder that does not aggregate) `label` with `dimensions`, described by `help`.
    func makeGauge(label: String, dimensions: [(String, String)], help: String) -> any RecorderHandler
}

/// One ring's swift-metrics instruments, labelled `ring="N"`, one per entry of
/// ``ServerStatistics/counters`` and ``ServerStatistics/gauges``; with no backend bootstrapped they
/// are no-ops. Recorded from the statistics each ring publishes once per tick.
struct ServerMetrics: Sendable {
    let counters: [Counter]
    let gauges: [Gauge]

    init(ring: Int, factory: any MetricsFactory) {
        let labels = [("ring", String(ring))]
        if let described = factory as? any MetricsFactoryWithHelp {
            counters = ServerStatistics.counters.map {
                Counter(
                    label: $0.name, dimensions: labels,
                    handler: described.makeCounter(label: $0.name, dimensions: labels, help: $0.help), factory: factory)
            }
            gauges = ServerStatistics.gauges.map {
                Gauge(
                    label: $0.name, dimensions: labels, aggregate: false,
                    handler: described.makeGauge(label: $0.name, dimensions: labels, help: $0.help), factory: factory)
            }
        } else {
            counters = ServerStatistics.counters.map { Counter(label: $0.name, dimensions: labels, factory: factory) }
            gauges = ServerStatistics.gauges.map { Gauge(label: $0.name, dimensions: labels, factory: factory) }
        }
    }

    func record(previous p: ServerStatistics, current c: ServerStatistics) {
        for (counter, metric) in zip(counters, ServerStatistics.counters) {
            let (before, now) = (p[keyPath: metric.field], c[keyPath: metric.field])
            if now > before { counter.increment(by: Int64(truncatingIfNeeded: now - before)) }
        }
        for (gauge, metric) in zip(gauges, ServerStatistics.gauges) { gauge.record(c[keyPath: metric.field]) }
    }
}

extension Server {
    /// The metrics the server renders itself, in the Prometheus text format: the histogram of
    /// completions harvested per loop turn, per ring (a swift-metrics recorder would take a lock
    /// per turn; the loop counts into fixed buckets instead).
    func appendServerMetrics(to buffer: inout [UInt8]) {
        let rings = state.withLock { $0.perThread.map(\.completionsPerTurn) }
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
