import Metrics

/// A swift-metrics backend that shows a help text beside each metric (Prometheus's `# HELP`). The
/// server makes its counters and gauges through these calls when its factory has them, and through
/// the plain ones otherwise (the `EchoServerMetrics` module has one over swift-prometheus: `PrometheusMetricsFactoryWithHelp`).
public protocol MetricsFactoryWithHelp: MetricsFactory {
    /// The counter `label` with `dimensions`, described by `help`.
    func makeCounter(label: String, dimensions: [(String, String)], help: String) -> any CounterHandler
    /// The gauge (a recorder that does not aggregate) `label` with `dimensions`, described by `help`.
    func makeGauge(label: String, dimensions: [(String, String)], help: String) -> any RecorderHandler
}
