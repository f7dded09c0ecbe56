import Dispatch
import Logging
import Metrics
import ServiceLifecycle
import SocketPool
import Synchronization
import URing

extension Server: Service {
    /// Runs as a swift-service-lifecycle `Service`: starts, serves, and stops on graceful shutdown
    /// or task cancellation; returns once every ring has exited.
    /// - Throws: ``ServerError`` from ``start()``.
    public func run() async throws {
        guard try startUnlessStopped() else { return }
        await withTaskCancellationHandler {
            await withGracefulShutdownHandler {
                await waitUntilStopped()
            } onGracefulShutdown: {
                self.stop()
            }
        } onCancel: {
            self.stop()
        }
        if let failure { throw failure }
    }
}
