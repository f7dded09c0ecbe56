import ArgumentParser
import Dispatch
import Glibc
import NIOCore
import NIOPosix

/// The echo server a Swift user writes with SwiftNIO's structured-concurrency API: a server
/// bootstrap that wraps every accepted channel in an `NIOAsyncChannel`, one child task per
/// connection in a discarding task group, and `executeThenClose { inbound, outbound in ... }`
/// that writes back every buffer it reads. Remote half-closure is on, so the peer's FIN ends
/// `inbound` and the echo of what came before still goes out (the contract of uring-echo's
/// `async-echo`).
@main
struct NIOAsyncEcho: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "nio-async-echo", abstract: "A SwiftNIO echo server written with NIOAsyncChannel.")

    @Option(help: "Address to bind.") var host = "127.0.0.1"
    @Option(help: "Port; 0 picks one.") var port = 7777
    @Option(help: "Event loop threads.") var threads = 1

    func run() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
        let server = try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .bind(host: host, port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                }
            }
        print("listening on \(host):\(server.channel.localAddress?.port ?? port) threads=\(threads)")
        fflush(nil)
        // SIGTERM/SIGINT close the listener; open connections are cut when the process exits.
        let signalQueue = DispatchQueue(label: "signals")
        var sources: [any DispatchSourceSignal] = []
        for sig in [SIGINT, SIGTERM] {
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: signalQueue)
            source.setEventHandler { Glibc.exit(0) }
            source.resume()
            sources.append(source)
        }
        try await withThrowingDiscardingTaskGroup { connections in
            try await server.executeThenClose { inbound in
                for try await connection in inbound {
                    connections.addTask {
                        try? await connection.executeThenClose { inbound, outbound in
                            for try await buffer in inbound { try await outbound.write(buffer) }
                        }
                    }
                }
            }
        }
        try await group.shutdownGracefully()
    }
}
