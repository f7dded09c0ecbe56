import Metrics

// What the server reports to swift-metrics (per ring), and what it renders itself for the
// metrics endpoint.

/// One ring's swift-metrics instruments, labelled `ring="N"`; with no backend bootstrapped they are
/// no-ops. Recorded from the statistics each ring publishes once per tick.
struct ServerMetrics: Sendable {
    let accepted, closed, rejected, bytesIn, bytesOut, completions, stale, errors: Counter
    let idleClosed, stalledClosed, bufferShortages, acceptPauses, receivePauses, writesRefused: Counter
    let endpointConnections: Counter
    let active: Gauge

    init(ring: Int, factory: any MetricsFactory) {
        let labels = [("ring", String(ring))]
        func counter(_ name: String) -> Counter { Counter(label: name, dimensions: labels, factory: factory) }
        accepted = counter("uring_echo_accepted_total")
        closed = counter("uring_echo_closed_total")
        rejected = counter("uring_echo_rejected_total")
        bytesIn = counter("uring_echo_bytes_in_total")
        bytesOut = counter("uring_echo_bytes_out_total")
        completions = counter("uring_echo_completions_total")
        stale = counter("uring_echo_stale_completions_total")
        errors = counter("uring_echo_errors_total")
        idleClosed = counter("uring_echo_idle_closed_total")
        stalledClosed = counter("uring_echo_stalled_closed_total")
        bufferShortages = counter("uring_echo_buffer_shortages_total")
        acceptPauses = counter("uring_echo_accept_pauses_total")
        receivePauses = counter("uring_echo_receive_pauses_total")
        writesRefused = counter("uring_echo_writes_refused_total")
        endpointConnections = counter("uring_echo_metrics_connections_total")
        active = Gauge(label: "uring_echo_active_connections", dimensions: labels, factory: factory)
    }

    func record(previous p: ServerStatistics, current c: ServerStatistics) {
        func add(_ counter: Counter, _ a: UInt64, _ b: UInt64) {
            if b > a { counter.increment(by: Int64(truncatingIfNeeded: b - a)) }
        }
        add(accepted, p.accepted, c.accepted)
        add(closed, p.closed, c.closed)
        add(rejected, p.rejected, c.rejected)
        add(bytesIn, p.bytesIn, c.bytesIn)
        add(bytesOut, p.bytesOut, c.bytesOut)
        add(completions, p.completions, c.completions)
        add(stale, p.staleCompletions, c.staleCompletions)
        add(errors, p.errors, c.errors)
        add(idleClosed, p.idleClosed, c.idleClosed)
        add(stalledClosed, p.stalledClosed, c.stalledClosed)
        add(bufferShortages, p.bufferShortages, c.bufferShortages)
        add(acceptPauses, p.acceptPauses, c.acceptPauses)
        add(receivePauses, p.receivePauses, c.receivePauses)
        add(writesRefused, p.writesRefused, c.writesRefused)
        add(endpointConnections, p.endpointConnections, c.endpointConnections)
        active.record(c.active)
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
