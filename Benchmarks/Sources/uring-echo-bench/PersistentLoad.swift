import Glibc
import Histogram
import SocketPool
import URing

/// C connections, each keeping `depth` messages of `size` bytes in flight, for `duration` seconds.
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

    init(_ options: Bench, _ address: SocketAddress) throws {
        self.options = options
        self.address = address
        ring = try Ring(RingOptions(entries: 4096, completionEntries: 16384))
        conns = Array(repeating: Conn(), count: options.connections)
    }

    func run() throws -> BenchResult {
        let size = options.size
        for i in 0..<conns.count {
            conns[i].fd = try Sockets.makeTCP()
            try Sockets.setOption(conns[i].fd, Int32(IPPROTO_TCP), TCP_NODELAY, 1)
            conns[i].pattern = makePattern(seed: UInt64(i + 1), extra: size)
            conns[i].recvBuffer = .allocate(byteCount: max(size * options.depth, 16384), alignment: 64)
            conns[i].sendTimes = .allocate(capacity: options.depth)
            try ring.prepareConnect(.fd(conns[i].fd), to: address, tag: tag(i, .connect))
        }
        now = nowNanoseconds()
        var window = MeasurementWindow(
            now: now, warmup: options.warmup, duration: options.duration, serverPid: options.serverPid)
        while true {
            try ring.submitAndWait(1, timeout: .milliseconds(100))
            now = nowNanoseconds()
            let ended = window.advance(now: now, result: &result)
            measuring = window.measuring
            stopping = window.stopping
            if ended {
                // Connections with nothing outstanding end now; the rest when their echo is in.
                for i in 0..<conns.count where conns[i].alive && conns[i].received == conns[i].sent && !conns[i].sending {
                    shutdown(conns[i].fd, Int32(SHUT_RDWR))
                }
            }
            try ring.forEachCompletion { (c: Completion) throws(URingError) in try handle(c) }
            if stopping && open == 0 { break }
            if window.overdue(now) { break }
        }
        for i in 0..<conns.count where conns[i].fd >= 0 { close(conns[i].fd) }
        result.mode = "persistent"
        result.connections = options.connections
        result.size = size
        result.depth = options.depth
        percentiles(histogram, into: &result)
        return result
    }

    func handle(_ c: Completion) throws(URingError) {
        let i = Int(c.tag >> 8)
        let kind = Kind(rawValue: c.tag & 0xFF)!
        switch kind {
        case .connect:
            if c.result < 0 {
                result.errors += 1
                return
            }
            conns[i].alive = true
            open += 1
            conns[i].allowance = options.depth
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
                        histogram.record(now &- conns[i].sendTimes![m % options.depth])
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

    func sendNext(_ i: Int) throws(URingError) {
        guard conns[i].alive, !conns[i].sending else { return }
        let size = options.size
        var into = conns[i].sent % size
        if into == 0 {
            guard conns[i].allowance > 0, !stopping else { return }
            conns[i].allowance -= 1
            conns[i].sendTimes![(conns[i].sent / size) % options.depth] = now
            into = 0
        }
        let offset = conns[i].sent % patternPeriod
        let bytes = UnsafeRawBufferPointer(rebasing: conns[i].pattern[offset..<(offset + size - into)])
        try ring.prepareSend(.fd(conns[i].fd), from: bytes, tag: tag(i, .send))
        conns[i].sending = true
    }
}
