// Echo written with the async API: `async-echo --port P --threads N [--driver auto|uring|epoll]`
// (port 0 picks one).
// The first line on stdout is `listening on HOST:PORT`; SIGTERM (or Ctrl-C) stops it gracefully.
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
let server = AsyncServer(configuration: config)

// SIGTERM/SIGINT stop the server: every connection closes, every task ends, serve returns.
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
        for await chunk in connection.inbound {  // the peer's bytes, until its FIN
            try await connection.outbound.write(chunk)  // sends the receive buffer itself
        }
    }  // leaving the closure closes the connection once the echo is sent
}
do {
    print("listening on \(try await server.listeningAddress)")
    fflush(nil)  // the line goes out now, even into a pipe
    try await serving.value
} catch {
    let message = "async-echo: \(error)\n"
    _ = message.withCString { write(2, $0, strlen($0)) }
    exit(1)
}
