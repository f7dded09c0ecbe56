import ArgumentParser
import Dispatch
import Glibc
import NIOCore
import NIOPosix

/// The echo server a Swift user would write with SwiftNIO: ServerBootstrap, one handler that
/// writes back what it reads and flushes when the read burst ends.
final class EchoHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.write(data, promise: nil)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.flush()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}

@main
struct NIOEcho: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "nio-echo", abstract: "A SwiftNIO echo server.")

    @Option(help: "Address to bind.") var host = "127.0.0.1"
    @Option(help: "Port; 0 picks one.") var port = 7777
    @Option(help: "Event loop threads.") var threads = 1

    func run() throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.maxMessagesPerRead, value: 16)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(EchoHandler()) }
            }
        let channel = try bootstrap.bind(host: host, port: port).wait()
        print("listening on \(host):\(channel.localAddress?.port ?? port) threads=\(threads)")
        let signalQueue = DispatchQueue(label: "signals")
        var sources: [DispatchSourceSignal] = []
        for sig in [SIGINT, SIGTERM] {
            signal(sig, SIG_IGN)
            let s = DispatchSource.makeSignalSource(signal: sig, queue: signalQueue)
            s.setEventHandler { channel.close(promise: nil) }
            s.resume()
            sources.append(s)
        }
        try channel.closeFuture.wait()
        try group.syncShutdownGracefully()
        print("stopped")
    }
}
