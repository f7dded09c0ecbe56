import Glibc
import SocketPool
import URing

/// Opens `connections` connections, echoes one message on each (so the server has set each one
/// up), then measures the server's RSS growth per connection and closes them all.
final class IdleLoad {
    let options: Bench
    let address: SocketAddress

    init(_ options: Bench, _ address: SocketAddress) {
        self.options = options
        self.address = address
    }

    func run() throws -> BenchResult {
        var result = BenchResult()
        result.mode = "idle"
        result.connections = options.connections
        result.size = options.size
        usleep(200_000)
        result.serverRSSBeforeKiB = processRSS(options.serverPid)
        let ring = try Ring(RingOptions(entries: 4096, completionEntries: 32768))
        let pattern = makePattern(seed: 77, extra: options.size)
        let buffers = UnsafeMutableRawBufferPointer.allocate(byteCount: options.connections * options.size, alignment: 64)
        defer { buffers.deallocate() }
        var fds = [Int32](repeating: -1, count: options.connections)
        var echoed = 0
        var pending = 0
        let deadline = nowNanoseconds() + UInt64(max(options.duration, 30) * 1e9)
        // Connect in waves so the listen backlog is never overrun.
        let wave = 500
        var next = 0
        while (next < fds.count || pending > 0) && nowNanoseconds() < deadline {
            while next < fds.count && pending < wave {
                fds[next] = try Sockets.makeTCP()
                try ring.prepareConnect(.fd(fds[next]), to: address, tag: tag(next, .connect))
                next += 1
                pending += 1
            }
            try ring.submitAndWait(1, timeout: .milliseconds(100))
            try ring.forEachCompletion { (c: Completion) throws(URingError) in
                let i = Int(c.tag >> 8)
                let buffer = UnsafeMutableRawBufferPointer(rebasing: buffers[(i * options.size)..<((i + 1) * options.size)])
                switch Kind(rawValue: c.tag & 0xFF)! {
                case .connect:
                    if c.result < 0 {
                        result.errors += 1
                        pending -= 1
                        return
                    }
                    try ring.prepareRecv(.fd(fds[i]), into: buffer, flags: Int32(MSG_WAITALL), tag: tag(i, .recv))
                    let bytes = UnsafeRawBufferPointer(rebasing: pattern[0..<options.size])
                    try ring.prepareSend(.fd(fds[i]), from: bytes, tag: tag(i, .send))
                case .recv:
                    pending -= 1
                    if c.result != Int32(options.size) {
                        result.errors += 1
                    } else if !matches(UnsafeRawBufferPointer(buffer), pattern: pattern, offset: 0) {
                        result.mismatches += 1
                    } else {
                        echoed += 1
                    }
                default: break
                }
            }
        }
        usleep(300_000)
        result.serverRSSKiB = processRSS(options.serverPid)
        result.messages = echoed
        result.connectionsCompleted = echoed
        for fd in fds where fd >= 0 { close(fd) }
        return result
    }
}
