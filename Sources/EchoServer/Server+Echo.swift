import Dispatch
import Logging
import Metrics
import ServiceLifecycle
import SocketPool
import Synchronization
import URing

extension Server where Handler == EchoHandler {
    /// An echo server: `Server(configuration: config)`.
    /// - Parameters:
    ///   - configuration: what to serve and how.
    ///   - logger: where to log.
    ///   - listeners: other addresses to serve, each with its own handler (see ``Listener``).
    ///   - metricsFactory: the swift-metrics backend; `nil` for the bootstrapped one.
    public convenience init(
        configuration: ServerConfiguration, logger: Logger = Logger(label: "uring-echo"), listeners: [Listener] = [],
        metricsFactory: (any MetricsFactory)? = nil
    ) {
        self.init(configuration: configuration, logger: logger, listeners: listeners, metricsFactory: metricsFactory) {
            EchoHandler()
        }
    }
}
