import Dispatch
import Logging
import Metrics
import ServiceLifecycle
import SocketPool
import Synchronization
import URing

/// The echo server: ``Server`` with ``EchoHandler``.
public typealias EchoServer = Server<EchoHandler>


extension Server where Handler == EchoHandler {
    /// An echo server.
    /// - Parameters:
    ///   - configuration: what to serve and how.
    ///   - logger: where to log.
    ///   - metrics: an HTTP endpoint serving the metrics exposition; `nil` for none.
    ///   - metricsFactory: the swift-metrics backend; `nil` for the bootstrapped one.
    public convenience init(
        configuration: ServerConfiguration, logger: Logger = Logger(label: "uring-echo"),
        metrics: MetricsEndpoint? = nil, metricsFactory: (any MetricsFactory)? = nil
    ) {
        self.init(configuration: configuration, logger: logger, metrics: metrics, metricsFactory: metricsFactory) {
            EchoHandler()
        }
    }
}
