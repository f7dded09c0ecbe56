// Each line comes back after a delay that stands for a backend call:
// `delayed-lines --port P --threads N --delay-ms D [--driver auto|uring|epoll]` (port 0 picks one).
//
// Each `\n`-terminated line (up to 4,096 bytes) is answered with the same line D milliseconds after
// it arrived (`try await Task.sleep`). A connection's lines are answered in their order, and no
// line waits for another's delay: they sleep side by side. The first line on stdout is
// `listening on HOST:PORT`; SIGTERM (or Ctrl-C) stops it gracefully.
import Dispatch
import EchoServer
import Glibc

func option(_ name: String) -> String? {
    let arguments = CommandLine.arguments
    guard let i = arguments.firstIndex(of: name), i + 1 < arguments.count else { return nil }
    return arguments[i + 1]
}

var config = ServerConfiguration()
config.port = option("--port").flatMap { UInt16($0) } ?? 7777
config.threads = option("--threads").flatMap { Int($0) } ?? 1
if let name = option("--driver") {  // auto (the default), uring or epoll
    guard let driver = ServerConfiguration.Driver(flag: name) else {
        var message = "--driver must be auto, uring or epoll, got '\(name)'\n"
        message.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
        exit(64)
    }
    config.driver = driver
}
let delay = Duration.milliseconds(option("--delay-ms").flatMap { Int($0) } ?? 100)
let maxLine = 4096
let server = AsyncServer(configuration: config)

var stops: [any DispatchSourceSignal] = []
for signalNumber in [SIGTERM, SIGINT] {
    signal(signalNumber, SIG_IGN)
    let source = DispatchSource.makeSignalSource(signal: signalNumber, queue: .global())
    source.setEventHandler { @Sendable in server.stop() }
    source.resume()
    stops.append(source)
}

let serving = Task {
    try await server.serve { connection in
        try await withThrowingDiscardingTaskGroup { group in
            // Lines with the time each is due; the answering task takes them in order.
            let (due, lines) = AsyncStream.makeStream(of: (ContinuousClock.Instant, [UInt8]).self)
            group.addTask {
                for await (at, line) in due {
                    try await Task.sleep(until: at, clock: .continuous)  // the "backend call"
                    try await connection.outbound.write(line)
                }
            }
            var partial: [UInt8] = []
            reading: for await chunk in connection.inbound {
                partial += chunk.bytes
                while let end = partial.firstIndex(of: UInt8(ascii: "\n")) {
                    lines.yield((.now + delay, Array(partial[...end])))
                    partial.removeSubrange(...end)
                }
                if partial.count > maxLine {
                    lines.yield((.now, Array("line longer than \(maxLine) bytes\n".utf8)))
                    break reading
                }
            }
            lines.finish()  // answer what came, then the connection closes
        }
    }
}
do {
    print("listening on \(try await server.listeningAddress)")
    fflush(nil)  // the line goes out now, even into a pipe
    try await serving.value
} catch {
    let message = "delayed-lines: \(error)\n"
    _ = message.withCString { write(2, $0, strlen($0)) }
    exit(1)
}
