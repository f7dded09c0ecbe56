// Embedding the server in a Swift concurrency program: it runs as a swift-service-lifecycle
// Service in a ServiceGroup, next to an async task of the program's own, and stops gracefully on
// SIGTERM/SIGINT (or when `--serve-seconds` elapse).
//
//   concurrency-embed [port] [--serve-seconds N]
import EchoServer
import Logging
import ServiceLifecycle

/// The program's own work, running beside the server: it logs the server's counters every second.
struct Reporter: Service {
    let server: Server<EchoHandler>
    let logger: Logger

    func run() async throws {
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            try? await Task.sleep(for: .seconds(1))
            let s = server.statistics
            logger.info("active \(s.active), accepted \(s.accepted), bytes echoed \(s.bytesOut)")
        }
    }
}

@main
struct App {
    static func main() async throws {
        let arguments = CommandLine.arguments.dropFirst()
        var config = ServerConfiguration()
        config.port = arguments.first.flatMap { UInt16($0) } ?? 7779
        let serveSeconds = arguments.firstIndex(of: "--serve-seconds").flatMap { i in
            arguments.index(after: i) < arguments.endIndex ? Int(arguments[arguments.index(after: i)]) : nil
        }
        var logger = Logger(label: "concurrency-embed")
        logger.logLevel = .info
        let server = Server(configuration: config, logger: logger)
        let group = ServiceGroup(
            configuration: .init(
                services: [.init(service: server), .init(service: Reporter(server: server, logger: logger))],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger))
        let running = Task { try await group.run() }
        print("concurrency-embed listening on \(try await server.listeningAddress)")
        if let serveSeconds {
            try await Task.sleep(for: .seconds(serveSeconds))
            await group.triggerGracefulShutdown()
        }
        try await running.value
        print("stopped: \(server.statistics)")
    }
}
