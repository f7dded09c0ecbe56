import Glibc
import Histogram
import SocketPool
import URing

/// `workers` concurrent connections, each: connect, `messages` round trips of `size` bytes, close;
/// then the next. With `--reuse` the socket is disconnected with connect(AF_UNSPEC) and reused.
final class ChurnLoad {
    struct Worker {
        var fd: Int32 = -1
        var serial = 0  // connection number: the pattern seed
        var pattern = UnsafeMutableRawBufferPointer(start: nil, count: 0)
        var recvBuffer = UnsafeMutableRawBufferPointer(start: nil, count: 0)
        var sent = 0
        var received = 0
        var started: UInt64 = 0
        var active = false
    }

    let options: Bench
    let address: SocketAddress
    let ring: Ring
    var pool: ClientSocketPool
    var workers: [Worker]
    var patterns: [UnsafeMutableRawBufferPointer]
    var histogram = Histogram<UInt64>(highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)
    var result = BenchResult()
    var measuring = false
    var stopping = false
    var now: UInt64 = 0
    var serial = 0
    var active = 0

    init(_ options: Bench, _ address: SocketAddress) throws {
        self.options = options
        self.address = address
        ring = try Ring(RingOptions(entries: 1024, completionEntries: 8192))
        pool = ClientSocketPool(capacity: options.workers, reuse: options.reuse)
        workers = Array(repeating: Worker(), count: options.workers)
        // A handful of streams, picked by connection number, so verification stays cheap.
        patterns = (0..<8).map { makePattern(seed: UInt64($0 + 101), extra: options.size) }
    }

    func run() throws -> BenchResult {
        for w in 0..<workers.count {
            workers[w].recvBuffer = .allocate(byteCount: max(options.size, 16384), alignment: 64)
        }
        now = nowNanoseconds()
        for w in 0..<workers.count { try begin(w) }
        var window = MeasurementWindow(
            now: now, warmup: options.warmup, duration: options.duration, serverPid: options.serverPid)
        while true {
            try ring.submitAndWait(1, timeout: .milliseconds(100))
            now = nowNanoseconds()
            _ = window.advance(now: now, result: &result)
            measuring = window.measuring
            stopping = window.stopping
            try ring.forEachCompletion { (c: Completion) throws(URingError) in try handle(c) }
            if stopping && active == 0 { break }
            if window.overdue(now) { break }
        }
        result.mode = "churn"
        result.connections = options.workers
        result.size = options.size
        result.depth = options.messages
        percentiles(histogram, into: &result)
        return result
    }

    func begin(_ w: Int) throws(URingError) {
        guard !stopping else { return }
        let fd: Int32
        do throws(URingError) { fd = try pool.acquire() } catch {
            result.errors += 1
            return
        }
        serial += 1
        workers[w].fd = fd
        workers[w].serial = serial
        workers[w].pattern = patterns[serial % patterns.count]
        workers[w].sent = 0
        workers[w].received = 0
        workers[w].started = now
        workers[w].active = true
        active += 1
        try ring.prepareConnect(.fd(fd), to: address, tag: tag(w, .connect))
    }

    func end(_ w: Int, ok: Bool) throws(URingError) {
        let fd = workers[w].fd
        if ok && options.reuse {
            try pool.prepareDisconnect(fd, on: ring, tag: tag(w, .disconnect))
            return
        }
        // Without reuse: an ordinary close, as a plain client would do.
        pool.discard(fd)
        try finish(w, ok: ok)
    }

    func finish(_ w: Int, ok: Bool) throws(URingError) {
        workers[w].active = false
        active -= 1
        if ok && measuring {
            result.connectionsCompleted += 1
            histogram.record(now &- workers[w].started)
        }
        if !ok { result.errors += 1 }
        try begin(w)
    }

    func sendMessage(_ w: Int) throws(URingError) {
        let offset = workers[w].sent % patternPeriod
        let into = workers[w].sent % options.size
        let bytes = UnsafeRawBufferPointer(rebasing: workers[w].pattern[offset..<(offset + options.size - into)])
        try ring.prepareSend(.fd(workers[w].fd), from: bytes, tag: tag(w, .send))
    }

    func handle(_ c: Completion) throws(URingError) {
        let w = Int(c.tag >> 8)
        switch Kind(rawValue: c.tag & 0xFF)! {
        case .connect:
            if c.result < 0 {
                try end(w, ok: false)
                return
            }
            try ring.prepareRecv(.fd(workers[w].fd), into: workers[w].recvBuffer, tag: tag(w, .recv))
            try sendMessage(w)
        case .send:
            if c.result <= 0 {
                return  // the recv reports the failure
            }
            workers[w].sent += Int(c.result)
            if workers[w].sent % options.size != 0 { try sendMessage(w) }
        case .recv:
            if c.result <= 0 {
                try end(w, ok: false)
                return
            }
            let n = Int(c.result)
            let bytes = UnsafeRawBufferPointer(rebasing: workers[w].recvBuffer[0..<n])
            if !matches(bytes, pattern: workers[w].pattern, offset: workers[w].received) {
                result.mismatches += 1
                try end(w, ok: false)
                return
            }
            workers[w].received += n
            let done = workers[w].received / options.size
            if workers[w].received == options.messages * options.size {
                try end(w, ok: true)
                return
            }
            if workers[w].received % options.size == 0 && done == workers[w].sent / options.size {
                try sendMessage(w)
            }
            try ring.prepareRecv(.fd(workers[w].fd), into: workers[w].recvBuffer, tag: tag(w, .recv))
        case .disconnect:
            if c.result == 0 {
                pool.release(workers[w].fd)
                try finish(w, ok: true)
            } else {
                pool.discard(workers[w].fd)
                try finish(w, ok: false)
            }
        case .close:
            break
        }
    }
}
