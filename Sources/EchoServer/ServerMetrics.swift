import Metrics

// What the server reports to swift-metrics (per ring).

/// One ring's swift-metrics instruments, labelled `ring="N"`, one per entry of
/// ``ServerStatistics/counters`` and ``ServerStatistics/gauges``; with no backend bootstrapped they
/// are no-ops. Recorded from the statistics each ring publishes once per tick.
struct ServerMetrics: Sendable {
    let counters: [Counter]
    let gauges: [Gauge]
    /// Where each counter and gauge lies in a ``ServerStatistics``: ``record(previous:current:)``
    /// runs on the ring thread once per tick, and reads through a key path allocate (in debug
    /// builds, on every access), so the fields are read at their offsets instead.
    let counterOffsets: [Int]
    let gaugeOffsets: [Int]

    init(ring: Int, factory: any MetricsFactory) {
        let labels = [("ring", String(ring))]
        counterOffsets = ServerStatistics.counters.map { MemoryLayout<ServerStatistics>.offset(of: $0.field)! }
        gaugeOffsets = ServerStatistics.gauges.map { MemoryLayout<ServerStatistics>.offset(of: $0.field)! }
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
        withUnsafeBytes(of: p) { before in
            withUnsafeBytes(of: c) { now in
                for i in 0..<counters.count {
                    let old = before.load(fromByteOffset: counterOffsets[i], as: UInt64.self)
                    let new = now.load(fromByteOffset: counterOffsets[i], as: UInt64.self)
                    if new > old { counters[i].increment(by: Int64(truncatingIfNeeded: new - old)) }
                }
                for i in 0..<gauges.count { gauges[i].record(now.load(fromByteOffset: gaugeOffsets[i], as: Int.self)) }
            }
        }
    }
}
