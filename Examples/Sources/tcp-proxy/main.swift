// A TCP proxy on the completion loop: `tcp-proxy --listen HOST:PORT --upstream HOST:PORT --threads N`
// (port 0 in --listen picks one). Every byte is relayed both ways, in order; a FIN from either side
// becomes a half-close on the other; a slow side holds bounded memory. The first line on stdout is
// `listening on HOST:PORT`; SIGTERM (or Ctrl-C) stops it gracefully.
// Also: --mode pooled|unpooled, --max-connections N (pairs), --idle-timeout S (0: none),
// --stall-timeout S (a side whose output the peer stops taking is reset after it, and its pair
// with it; default 60), --connect-timeout-ms MS, --disable FEATURE, --upstream-ending
// half-close|reset (when the client ends first: pass its FIN on, the proxy keeping a TIME_WAIT per
// connection, or reset the upstream connection, for protocols whose clients close when done).
import Dispatch
import EchoServer
import Glibc
import URing

func option(_ name: String) -> String? {
    let arguments = CommandLine.arguments
    guard let i = arguments.firstIndex(of: name), i + 1 < arguments.count else { return nil }
    return arguments[i + 1]
}

func fail(_ message: String, status: Int32 = 64) -> Never {
    let text = "tcp-proxy: \(message)\n"
    _ = text.withCString { write(2, $0, strlen($0)) }
    exit(status)
}

/// `HOST:PORT`, or `[V6]:PORT`: the host, the port and the address.
func address(_ text: String, flag: String) -> (host: String, port: UInt16, address: SocketAddress) {
    guard let colon = text.lastIndex(of: ":"), let port = UInt16(text[text.index(after: colon)...]) else {
        fail("\(flag) wants HOST:PORT, got '\(text)'")
    }
    var host = String(text[..<colon])
    if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
    guard let address = SocketAddress(host: host, port: port) else { fail("\(flag): '\(host)' is not a numeric address") }
    return (host, port, address)
}

guard let listenText = option("--listen"), let upstreamText = option("--upstream") else {
    fail("usage: tcp-proxy --listen HOST:PORT --upstream HOST:PORT [--threads N] [--driver auto|uring|epoll]")
}
let listen = address(listenText, flag: "--listen")
let upstream = address(upstreamText, flag: "--upstream").address
var config = ServerConfiguration()
config.host = listen.host
config.port = listen.port
config.threads = option("--threads").flatMap { Int($0) } ?? 1
if let name = option("--driver") {  // auto (the default), uring or epoll
    guard let driver = ServerConfiguration.Driver(flag: name) else {
        fail("--driver must be auto, uring or epoll, got '\(name)'")
    }
    config.driver = driver
}
config.mode = option("--mode") == "unpooled" ? .unpooled : .pooled
config.maxConnections = option("--max-connections").flatMap { Int($0) } ?? 4096
config.maxOutboundConnections = config.maxConnections  // one upstream connection per client
if let seconds = option("--idle-timeout").flatMap({ Int($0) }) {
    config.idleTimeout = seconds > 0 ? .seconds(seconds) : nil
}
if let text = option("--stall-timeout") {
    guard let seconds = Int(text), (1...604_800).contains(seconds) else { fail("--stall-timeout must be 1...604800 seconds, got '\(text)'") }
    config.stallTimeout = .seconds(seconds)
}
// --disable FEATURE (as uring-echo's: direct-socket, fixed-files, ...), any number of times.
for (i, argument) in CommandLine.arguments.enumerated() where argument == "--disable" && i + 1 < CommandLine.arguments.count {
    guard let feature = KernelFeatures(named: CommandLine.arguments[i + 1]) else {
        fail("--disable: no feature '\(CommandLine.arguments[i + 1])'")
    }
    config.features.remove(feature)
}
let connectTimeout = Duration.milliseconds(option("--connect-timeout-ms").flatMap { Int($0) } ?? 5000)
let ending: TCPProxy.UpstreamEnding
switch option("--upstream-ending") ?? "half-close" {
case "half-close": ending = .halfClose
case "reset": ending = .reset
case let other: fail("--upstream-ending must be half-close or reset, got '\(other)'")
}

let server = Server(configuration: config) {
    TCPProxy(upstream: upstream, connectTimeout: connectTimeout, upstreamEnding: ending)
}
do {
    try server.start()
} catch {
    fail("\(error)", status: 1)
}
print("listening on \(server.boundAddress!)")
fflush(nil)
for signalNumber in [SIGTERM, SIGINT] { signal(signalNumber, SIG_IGN) }
let stops = [SIGTERM, SIGINT].map { signalNumber in
    let source = DispatchSource.makeSignalSource(signal: signalNumber, queue: .global())
    source.setEventHandler { @Sendable in server.stop() }
    source.resume()
    return source
}
server.wait()
_ = stops
let s = server.statistics
print("stopped: \(s.accepted) clients, \(s.connects) upstream connections, \(s.connectsRefused + s.connectsTimedOut + s.connectsUnreachable + s.connectsFailed) failed connects")
if let failure = server.failure { fail("\(failure)", status: 70) }
