import CoreMetrics
import EchoServer
import Prometheus

/// swift-prometheus's `PrometheusMetricsFactory`, with the help texts the server gives its
/// counters and gauges (`ServerStatistics.counters`): each gets a `# HELP` line, which
/// `promtool check metrics` asks of every metric. Everything else is the wrapped factory's.
///
/// ```swift
/// let registry = PrometheusCollectorRegistry()
/// MetricsSystem.bootstrap(PrometheusMetricsFactoryWithHelp(registry: registry))
/// ```
///
/// A metric name must be made with help by every caller or by none (swift-prometheus stops the
/// process on a help text that differs from the one registered): the server's names are made only
/// here.
public struct PrometheusMetricsFactoryWithHelp: MetricsFactoryWithHelp {
    /// The factory all other metrics go to.
    public var base: PrometheusMetricsFactory

    /// The registry the metrics are emitted from.
    public var registry: PrometheusCollectorRegistry { base.registry }

    /// A factory over `registry`.
    /// - Parameter registry: where metrics are registered.
    public init(registry: PrometheusCollectorRegistry) {
        base = PrometheusMetricsFactory(registry: registry)
    }

    public func makeCounter(label: String, dimensions: [(String, String)], help: String) -> any CounterHandler {
        let (name, labels) = base.nameAndLabelSanitizer(label, dimensions)
        return registry.makeCounter(name: name, labels: labels, help: help)
    }

    public func makeGauge(label: String, dimensions: [(String, String)], help: String) -> any RecorderHandler {
        let (name, labels) = base.nameAndLabelSanitizer(label, dimensions)
        return registry.makeGauge(name: name, labels: labels, help: help)
    }

    public func makeCounter(label: String, dimensions: [(String, String)]) -> any CounterHandler {
        base.makeCounter(label: label, dimensions: dimensions)
    }

    public func makeFloatingPointCounter(label: String, dimensions: [(String, String)]) -> any FloatingPointCounterHandler {
        base.makeFloatingPointCounter(label: label, dimensions: dimensions)
    }

    public func makeRecorder(label: String, dimensions: [(String, String)], aggregate: Bool) -> any RecorderHandler {
        base.makeRecorder(label: label, dimensions: dimensions, aggregate: aggregate)
    }

    public func makeMeter(label: String, dimensions: [(String, String)]) -> any MeterHandler {
        base.makeMeter(label: label, dimensions: dimensions)
    }

    public func makeTimer(label: String, dimensions: [(String, String)]) -> any TimerHandler {
        base.makeTimer(label: label, dimensions: dimensions)
    }

    public func destroyCounter(_ handler: any CounterHandler) { base.destroyCounter(handler) }
    public func destroyFloatingPointCounter(_ handler: any FloatingPointCounterHandler) {
        base.destroyFloatingPointCounter(handler)
    }
    public func destroyRecorder(_ handler: any RecorderHandler) { base.destroyRecorder(handler) }
    public func destroyMeter(_ handler: any MeterHandler) { base.destroyMeter(handler) }
    public func destroyTimer(_ handler: any TimerHandler) { base.destroyTimer(handler) }
}
