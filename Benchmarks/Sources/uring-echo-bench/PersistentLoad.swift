import Glibc
import Histogram
import SocketPool
import URing

/// C connections, each keeping `depth` messages of `size` bytes in flight, for `duration` seconds.
///
/// - `persistent`: one send per message; a message starts when an earlier one is fully echoed.
/// - `pipelined`: every message allowed to start goes out back to back in one send (all `depth` at
///   first, then as many as were just echoed), so a server sees several messages per read.
/// - `streaming`: as persistent, for many connections: they connect in waves of at most
///   ``connectWave`` (the listen backlog is not overrun), the warm-up starts once all are
///   connected, a handful of streams are shared between connections (client memory stays small),
///   and the server's RSS is taken before connecting and at the end of the measured window, while
///   every connection is still open and sending.
final class PersistentLoad {
    struct Conn {
        var fd: Int32 = -1
        var pattern = UnsafeMutableRawBufferPointer(start: nil, count: 0)
        var recvBuffer = UnsafeMutableRawBufferPointer(start: nil, count: 0)
        var sent = 0  // bytes sent
        var received = 0  // bytes received
        var allowance = 0  // messages allowed to start
        var sending = false
        var alive = false
        var sendTimes: UnsafeMutablePointer<UInt64>? = nil
    }

    let options: Bench
    let address: SocketAddress
    let ring: Ring
    var conns: [Conn]
    var histogram = Histogram<UInt64>(highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)
    var result = BenchResult()
    var measuring = false
    var stopping = false
    var now: UInt64 = 0
    var open = 0
    /// Connects posted and not yet completed, and the next connection to connect.
    var connecting = 0
    var nextToConnect = 0
    let depth: Int
    let batched: Bool
    let streaming: Bool
    static let connectWave = 500
    static let connectBound: UInt64 = 30_000_000_000

    init(_ options: Bench, _ address: SocketAddress) throws {
        self.options = options
        self.address = address
        depth = options.inFlight
        batched = options.mode == .pipelined
        streaming = options.mode == .streaming
        ring = try Ring(RingOptions(entries: 4096, completionEntries: streaming ? 32768 : 16384))
        conns = Array(repeating: Conn(), count: options.connections)
    }

    func run() throws -> BenchResult {
        let size = options.size
        // A pattern per connection, or for streaming a few shared ones; each with room for `depth`
        // messages past its end, so any run of in-flight messages is one contiguous slice.
        let shared = streaming ? (0..<16).map { makePattern(seed: UInt64($0 + 1), extra: size * depth) } : []
        let recvSize = streaming ? max(size * depth, 4096) : max(size * depth, 16384)
        for i in 0..<conns.count {
            conns[i].pattern =
                streaming ? shared[i % shared.count] : makePattern(seed: UInt64(i + 1), extra: size * depth)
            conns[i].recvBuffer = .allocate(byteCount: recvSize, alignment: 64)
            conns[i].sendTimes = .allocate(capacity: depth)
        }
        if streaming {
            usleep(200_000)
            result.serverRSSBeforeKiB = processRSS(options.serverPid)
        }
        let wave = streaming ? Self.connectWave : conns.count
        try connectMore(wave)
        now = nowNanoseconds()
        let connectDeadline = now + Self.connectBound
        // Streaming measures only once every connection is in (or the connect bound has passed).
        var window: MeasurementWindow? = nil
        while true {
            if window == nil
                && (!streaming || (nextToConnect == conns.count && connecting == 0) || now > connectDeadline)
            {
                window = MeasurementWindow(
                    now: now, warmup: options.warmup, duration: options.duration, serverPid: options.serverPid)
            }
            try ring.submitAndWait(1, timeout: .milliseconds(100))
            now = nowNanoseconds()
            let ended = window?.advance(now: now, result: &result) ?? false
            measuring = window?.measuring ?? false
            stopping = window?.stopping ?? false
            if ended {
                // Connections with nothing outstanding end now; the rest when their echo is in.
                for i in 0..<conns.count where conns[i].alive && conns[i].received == conns[i].sent && !conns[i].sending {
                    shutdown(conns[i].fd, Int32(SHUT_RDWR))
                }
            }
            try ring.forEachCompletion { (c: Completion) throws(URingError) in try handle(c) }
            if !stopping { try connectMore(wave) }
            if stopping && open == 0 && connecting == 0 { break }
            if let window, window.overdue(now) { break }
        }
        for i in 0..<conns.count where conns[i].fd >= 0 { close(conns[i].fd) }
        result.mode = options.mode.rawValue
        result.connections = options.connections
        result.size = size
        result.depth = depth
        percentiles(histogram, into: &result)
        return result
    }

    /// Posts connects while fewer than `wave` are pending.
    func connectMore(_ wave: Int) throws {
        while nextToConnect < conns.count && connecting < wave {
            let i = nextToConnect
            conns[i].fd = try Sockets.makeTCP()
            try Sockets.setOption(conns[i].fd, Int32(IPPROTO_TCP), TCP_NODELAY, 1)
            try ring.prepareConnect(.fd(conns[i].fd), to: address, tag: tag(i, .connect))
            nextToConnect += 1
            connecting += 1
        }
    }

    func handle(_ c: Completion) throws(URingError) {
        let i = Int(c.tag >> 8)
        let kind = Kind(rawValue: c.tag & 0xFF)!
        switch kind {
        case .connect:
            connecting -= 1
            if c.result < 0 {
                result.errors += 1
                return
            }
            if stopping {  // connected after the end (streaming past its connect bound): not used
                shutdown(conns[i].fd, Int32(SHUT_RDWR))
                return
            }
            conns[i].alive = true
            open += 1
            conns[i].allowance = depth
            try postRecv(i)
            try sendNext(i)
        case .send:
            conns[i].sending = false
            if c.result <= 0 {
                fail(i)
                return
            }
            conns[i].sent += Int(c.result)
            try sendNext(i)
        case .recv:
            if c.result <= 0 {
                if stopping {
                    if conns[i].alive {
                        conns[i].alive = false
                        open -= 1
                    }
                } else {
                    fail(i)
                }
                return
            }
            let n = Int(c.result)
            let size = options.size
            let bytes = UnsafeRawBufferPointer(rebasing: conns[i].recvBuffer[0..<n])
            if !matches(bytes, pattern: conns[i].pattern, offset: conns[i].received) {
                result.mismatches += 1
                fail(i)
                return
            }
            let before = conns[i].received / size
            conns[i].received += n
            let after = conns[i].received / size
            if after > before {
                for m in before..<after {
                    if measuring {
                        result.messages += 1
                        histogram.record(now &- conns[i].sendTimes![m % depth])
                    }
                }
                if !stopping { conns[i].allowance += after - before }
            }
            if stopping && conns[i].received == conns[i].sent && !conns[i].sending {
                conns[i].alive = false
                open -= 1
                try ring.prepareClose(.fd(conns[i].fd), tag: tag(i, .close))
                conns[i].fd = -1
                return
            }
            try postRecv(i)
            try sendNext(i)
        case .close, .disconnect:
            break
        }
    }

    func fail(_ i: Int) {
        result.errors += 1
        if conns[i].alive {
            conns[i].alive = false
            open -= 1
        }
    }

    func postRecv(_ i: Int) throws(URingError) {
        try ring.prepareRecv(.fd(conns[i].fd), into: conns[i].recvBuffer, tag: tag(i, .recv))
    }

    /// Sends the rest of a partly sent message; else (persistent, streaming) the next message, or
    /// (pipelined) every message allowed to start, back to back in one send.
    func sendNext(_ i: Int) throws(URingError) {
        guard conns[i].alive, !conns[i].sending else { return }
        let size = options.size
        let sent = conns[i].sent
        var length = (size - sent % size) % size  // the rest of a partly sent message
        if (length == 0 || batched) && conns[i].allowance > 0 && !stopping {
            let fresh = batched ? conns[i].allowance : 1
            let first = (sent + length) / size
            for m in first..<(first + fresh) { conns[i].sendTimes![m % depth] = now }
            conns[i].allowance -= fresh
            length += fresh * size
        }
        guard length > 0 else { return }
        let offset = sent % patternPeriod
        let bytes = UnsafeRawBufferPointer(rebasing: conns[i].pattern[offset..<(offset + length)])
        try ring.prepareSend(.fd(conns[i].fd), from: bytes, tag: tag(i, .send))
        conns[i].sending = true
    }
}
