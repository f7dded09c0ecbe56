// The smallest echo server: `minimal-echo [port]`. Ctrl-C or SIGTERM stops it gracefully.
import Dispatch
import EchoServer
import Glibc

var config = ServerConfiguration()
config.port = CommandLine.arguments.dropFirst().first.flatMap { UInt16($0) } ?? 7777
let server = Server(configuration: config)
try server.start()
print("listening on \(server.boundAddress!)")
signal(SIGTERM, SIG_IGN)
let stop = DispatchSource.makeSignalSource(signal: SIGTERM, queue: .global())
stop.setEventHandler { @Sendable in server.stop() }
stop.resume()
server.wait()
print("stopped after \(server.statistics.accepted) connections")
