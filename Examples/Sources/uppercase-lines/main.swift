// A second protocol on the same completion loop: every byte comes back upper-cased, and a line
// reading `bye` ends the connection (after its reply is sent). Shows the handler interface:
// in-place processing, per-connection state kept in storage sized once, no allocation per call.
//
//   uppercase-lines [port]
import Dispatch
import EchoServer
import Glibc

struct UppercaseLines: ConnectionHandler {
    /// The last five bytes seen on each connection, to spot "\nbye\n" across reads.
    var recent: [UInt64] = []

    mutating func start(capacity: Int) {
        recent = Array(repeating: 0, count: capacity)
    }

    // No greeting (the protocol has none); a `connection.write("...")` here would send one.
    mutating func opened(_ connection: Connection) {
        recent[connection.index] = UInt64(UInt8(ascii: "\n"))  // a connection starts at a line start
    }

    // Answered in place: the buffer is rewritten and its front sent back, nothing is copied.
    mutating func received(_ bytes: UnsafeMutableRawBufferPointer, connection: Connection) -> Reply {
        var window = recent[connection.index]
        let bye: UInt64 = 0x0A_42_59_45_0A  // "\nBYE\n" after upper-casing
        for i in 0..<bytes.count {
            var b = bytes[i]
            if b >= UInt8(ascii: "a") && b <= UInt8(ascii: "z") { b -= 32 }
            bytes[i] = b
            window = (window << 8 | UInt64(b)) & 0xFF_FFFF_FFFF
            if window == bye {
                recent[connection.index] = window
                return .sendThenClose(i + 1)
            }
        }
        recent[connection.index] = window
        return .send(bytes.count)
    }
}

var config = ServerConfiguration()
config.port = CommandLine.arguments.dropFirst().first.flatMap { UInt16($0) } ?? 7778
let server = Server(configuration: config) { UppercaseLines() }
try server.start()
print("uppercase-lines listening on \(server.boundAddress!)")
signal(SIGTERM, SIG_IGN)
let stop = DispatchSource.makeSignalSource(signal: SIGTERM, queue: .global())
stop.setEventHandler { @Sendable in server.stop() }
stop.resume()
server.wait()
