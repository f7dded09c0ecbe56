import ArgumentParser
import Glibc
import Histogram
import SocketPool
import URing

/// `uring-echo-bench`: a load generator written on this project's own ring, so it can drive a
/// server harder than a blocking client. Every echoed byte is checked against the connection's own
/// pseudo-random stream. Loopback only; bounded in count and time.
///
/// Modes: `persistent` (C connections, `depth` messages in flight, one send per message),
/// `pipelined` (the same with the allowed messages written back to back in one send; depth 8 by
/// default), `streaming` (many connections, connected in waves, all sending at once; the server's
/// RSS per connection beside messages/s and CPU per message), `churn` and `idle`.
@main
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "uring-echo-bench", abstract: "Load generator for TCP echo servers (io_uring based).")

    enum Mode: String, ExpressibleByArgument { case persistent, pipelined, streaming, churn, idle }

    @Option(help: "Server address (loopback only).") var host = "127.0.0.1"
    @Option(help: "Server port.") var port: UInt16 = 7777
    @Option(help: "persistent, pipelined, streaming, churn or idle.") var mode: Mode = .persistent
    @Option(help: "Persistent/pipelined/streaming/idle: connections.") var connections = 50
    @Option(help: "Message size in bytes.") var size = 128
    @Option(help: "Persistent/pipelined/streaming: messages in flight per connection (default 8 pipelined, else 1).")
    var depth: Int? = nil
    @Option(help: "Seconds measured.") var duration = 5.0
    @Option(help: "Seconds of warm-up before measuring.") var warmup = 1.0
    @Option(help: "Churn: messages per connection.") var messages = 1
    @Option(help: "Churn: concurrent connections.") var workers = 16
    @Flag(help: "Churn: reuse client sockets through ClientSocketPool (connect(AF_UNSPEC), abortive).")
    var reuse = false
    @Option(help: "PID of the server, for its CPU time and RSS.") var serverPid: Int32 = 0
    @Option(help: "A label for the result line.") var label = ""
    @Flag(help: "Print one JSON object instead of text.") var json = false

    func validate() throws {
        guard host.hasPrefix("127.") || host == "::1" else { throw ValidationError("loopback addresses only") }
        guard (1...100_000).contains(connections), (1...(1 << 20)).contains(size), (1...1024).contains(inFlight),
            duration > 0, duration <= 600, warmup >= 0, warmup <= 60, (1...100_000).contains(messages),
            (1...4096).contains(workers)
        else { throw ValidationError("a value is out of range") }
    }

    /// Messages in flight per connection: `--depth`, or the mode's default.
    var inFlight: Int { depth ?? (mode == .pipelined ? 8 : 1) }

    func run() throws {
        var result: BenchResult
        let address = SocketAddress(host: host, port: port)!
        raiseDescriptorLimit()
        switch mode {
        case .persistent, .pipelined, .streaming:
            result = try PersistentLoad(self, address).run()
        case .churn:
            result = try ChurnLoad(self, address).run()
        case .idle:
            result = try IdleLoad(self, address).run()
        }
        result.label = label
        result.timeWaitServer = countTimeWait(localPort: port)
        result.timeWaitClient = countTimeWait(remotePort: port)
        print(json ? result.json : result.text)
        if result.mismatches > 0 { throw ExitCode(2) }
    }
}

/// What one run measured.
struct BenchResult {
    var label = ""
    var mode = ""
    var connections = 0
    var size = 0
    var depth = 0
    var seconds = 0.0
    var messages = 0
    var connectionsCompleted = 0
    var errors = 0
    var mismatches = 0
    var p50 = 0.0, p90 = 0.0, p99 = 0.0, p999 = 0.0, max = 0.0
    var serverCPUSeconds = 0.0
    var serverRSSKiB = 0
    var serverRSSBeforeKiB = 0
    var timeWaitServer = 0
    var timeWaitClient = 0

    var messagesPerSecond: Double { seconds > 0 ? Double(messages) / seconds : 0 }
    var connectionsPerSecond: Double { seconds > 0 ? Double(connectionsCompleted) / seconds : 0 }
    var serverCPUMicrosPerMessage: Double { messages > 0 ? serverCPUSeconds * 1e6 / Double(messages) : 0 }
    var serverCPUMicrosPerConnection: Double {
        connectionsCompleted > 0 ? serverCPUSeconds * 1e6 / Double(connectionsCompleted) : 0
    }
    var rssBaselineBytes: Int { serverRSSBeforeKiB * 1024 }
    var rssPerConnectionBytes: Double {
        connections > 0 ? Double(serverRSSKiB - serverRSSBeforeKiB) * 1024 / Double(connections) : 0
    }

    var json: String {
        func f(_ x: Double) -> String { fixed(x, 3) }
        return "{\"label\":\"\(label)\",\"mode\":\"\(mode)\",\"connections\":\(connections),\"size\":\(size),"
            + "\"depth\":\(depth),\"seconds\":\(f(seconds)),\"messages\":\(messages),"
            + "\"messages_per_sec\":\(f(messagesPerSecond)),\"connections_completed\":\(connectionsCompleted),"
            + "\"connections_per_sec\":\(f(connectionsPerSecond)),\"errors\":\(errors),\"mismatches\":\(mismatches),"
            + "\"p50_us\":\(f(p50)),\"p90_us\":\(f(p90)),\"p99_us\":\(f(p99)),\"p999_us\":\(f(p999)),\"max_us\":\(f(max)),"
            + "\"server_cpu_s\":\(f(serverCPUSeconds)),\"server_cpu_us_per_msg\":\(f(serverCPUMicrosPerMessage)),"
            + "\"server_cpu_us_per_conn\":\(f(serverCPUMicrosPerConnection)),\"server_rss_kib\":\(serverRSSKiB),"
            + "\"server_rss_before_kib\":\(serverRSSBeforeKiB),\"server_rss_bytes\":\(serverRSSKiB * 1024),"
            + "\"rss_baseline_bytes\":\(rssBaselineBytes),\"rss_per_conn_bytes\":\(f(rssPerConnectionBytes)),"
            + "\"time_wait_server\":\(timeWaitServer),\"time_wait_client\":\(timeWaitClient)}"
    }

    var text: String {
        func f(_ x: Double) -> String { fixed(x, 1) }
        switch mode {
        case "churn":
            return "\(label) churn: \(connectionsCompleted) connections in \(f(seconds)) s = \(f(connectionsPerSecond))/s, "
                + "latency p50 \(f(p50)) p99 \(f(p99)) µs, server CPU \(f(serverCPUMicrosPerConnection)) µs/conn, "
                + "errors \(errors), mismatches \(mismatches), TIME_WAIT server \(timeWaitServer) client \(timeWaitClient)"
        case "idle":
            return "\(label) idle: \(connections) connections, server RSS \(serverRSSBeforeKiB) -> \(serverRSSKiB) KiB "
                + "= \(f(rssPerConnectionBytes)) B/conn, errors \(errors), mismatches \(mismatches)"
        case "streaming":
            return "\(label) streaming \(connections)x\(size)B depth \(depth): \(f(messagesPerSecond)) msg/s, "
                + "p50 \(f(p50)) p99 \(f(p99)) µs, server CPU \(fixed(serverCPUMicrosPerMessage, 2)) µs/msg, "
                + "server RSS \(serverRSSBeforeKiB) -> \(serverRSSKiB) KiB = \(f(rssPerConnectionBytes)) B/conn, "
                + "errors \(errors), mismatches \(mismatches)"
        default:
            return "\(label) \(mode) \(connections)x\(size)B depth \(depth): \(f(messagesPerSecond)) msg/s, "
                + "p50 \(f(p50)) p90 \(f(p90)) p99 \(f(p99)) p99.9 \(f(p999)) max \(f(max)) µs, "
                + "server CPU \(fixed(serverCPUMicrosPerMessage, 2)) µs/msg, errors \(errors), mismatches \(mismatches)"
        }
    }
}

// MARK: Shared pieces

/// `x` with `digits` decimals (no Foundation here).
func fixed(_ x: Double, _ digits: Int) -> String {
    guard x.isFinite else { return "0" }
    var scale = 1.0
    for _ in 0..<digits { scale *= 10 }
    let v = (abs(x) * scale).rounded()
    let whole = Int(v / scale)
    var frac = String(Int(v.truncatingRemainder(dividingBy: scale)))
    while frac.count < digits { frac = "0" + frac }
    return (x < 0 ? "-" : "") + (digits > 0 ? "\(whole).\(frac)" : "\(whole)")
}

@inline(__always)
func nowNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}

/// The bytes connection `seed` sends: a 64 KiB pseudo-random block repeated, stored with an
/// `extra`-byte tail so any message can be sent from it without copying.
let patternPeriod = 65536

func makePattern(seed: UInt64, extra: Int) -> UnsafeMutableRawBufferPointer {
    let block = UnsafeMutableRawBufferPointer.allocate(byteCount: patternPeriod + extra, alignment: 64)
    var x = seed &* 0x9E37_79B9_7F4A_7C15 | 1
    for i in 0..<patternPeriod {
        x ^= x << 13
        x ^= x >> 7
        x ^= x << 17
        block[i] = UInt8(truncatingIfNeeded: x)
    }
    for i in 0..<extra { block[patternPeriod + i] = block[i % patternPeriod] }
    return block
}

/// Whether `bytes` equal the stream from `offset` on.
func matches(_ bytes: UnsafeRawBufferPointer, pattern: UnsafeMutableRawBufferPointer, offset: Int) -> Bool {
    var done = 0
    while done < bytes.count {
        let start = (offset + done) % patternPeriod
        let n = min(bytes.count - done, patternPeriod - start)
        if memcmp(bytes.baseAddress! + done, pattern.baseAddress! + start, n) != 0 { return false }
        done += n
    }
    return true
}

/// Lifts the soft descriptor limit to the hard one, for runs of 10,000 connections and more.
func raiseDescriptorLimit() {
    var limit = rlimit()
    guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < limit.rlim_max else { return }
    limit.rlim_cur = limit.rlim_max
    _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
}

/// utime + stime of a process in seconds (/proc/PID/stat), and its RSS in KiB.
func processCPU(_ pid: Int32) -> Double {
    guard pid > 0, let text = try? String(contentsOfFile: "/proc/\(pid)/stat") else { return 0 }
    guard let close = text.lastIndex(of: ")") else { return 0 }
    let fields = text[text.index(after: close)...].split(separator: " ")
    // fields[0] is state (field 3); utime is field 14, stime field 15.
    guard fields.count > 13, let u = Double(fields[11]), let s = Double(fields[12]) else { return 0 }
    return (u + s) / Double(sysconf(Int32(_SC_CLK_TCK)))
}

func processRSS(_ pid: Int32) -> Int {
    guard pid > 0, let text = try? String(contentsOfFile: "/proc/\(pid)/status") else { return 0 }
    for line in text.split(separator: "\n") where line.hasPrefix("VmRSS:") {
        return Int(line.split(separator: " ").dropFirst().first ?? "0") ?? 0
    }
    return 0
}

/// Sockets in TIME_WAIT whose local (or remote) port is `port`, from /proc/net/tcp and tcp6.
func countTimeWait(localPort: UInt16? = nil, remotePort: UInt16? = nil) -> Int {
    var count = 0
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        guard let text = try? String(contentsOfFile: file) else { continue }
        for line in text.split(separator: "\n").dropFirst() {
            let f = line.split(separator: " ")
            guard f.count > 3, f[3] == "06" else { continue }
            let local = UInt16(f[1].split(separator: ":").last ?? "", radix: 16)
            let remote = UInt16(f[2].split(separator: ":").last ?? "", radix: 16)
            if let localPort, local == localPort { count += 1 }
            if let remotePort, remote == remotePort { count += 1 }
        }
    }
    return count
}

extension String {
    init(contentsOfFile path: String) throws {
        guard let f = fopen(path, "r") else { throw URingError("fopen", errno: .current) }
        defer { fclose(f) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = fread(&chunk, 1, chunk.count, f)
            if n <= 0 { break }
            bytes += chunk[0..<n]
        }
        self = String(decoding: bytes, as: UTF8.self)
    }
}

func percentiles(_ h: Histogram<UInt64>, into r: inout BenchResult) {
    guard h.totalCount > 0 else { return }
    r.p50 = Double(h.valueAtPercentile(50)) / 1000
    r.p90 = Double(h.valueAtPercentile(90)) / 1000
    r.p99 = Double(h.valueAtPercentile(99)) / 1000
    r.p999 = Double(h.valueAtPercentile(99.9)) / 1000
    r.max = Double(h.max) / 1000
}

enum Kind: UInt64 { case connect = 1, send, recv, close, disconnect }

@inline(__always) func tag(_ conn: Int, _ kind: Kind) -> UInt64 { UInt64(conn) << 8 | kind.rawValue }

/// The warm-up / measure / drain phases of a load run, and the server figures taken at their edges.
struct MeasurementWindow {
    let start: UInt64
    let end: UInt64
    let serverPid: Int32
    private(set) var measuring = false
    private(set) var stopping = false
    private var cpuStart = 0.0

    init(now: UInt64, warmup: Double, duration: Double, serverPid: Int32) {
        start = now + UInt64(warmup * 1e9)
        end = start + UInt64(duration * 1e9)
        self.serverPid = serverPid
    }

    /// Moves the phase on at time `now`; returns true at the moment measuring ends (records the
    /// server's CPU time, RSS and the measured duration into `result`).
    mutating func advance(now: UInt64, result: inout BenchResult) -> Bool {
        if !measuring && !stopping && now >= start {
            measuring = true
            cpuStart = processCPU(serverPid)
        }
        if measuring && now >= end {
            measuring = false
            stopping = true
            result.serverCPUSeconds = processCPU(serverPid) - cpuStart
            result.serverRSSKiB = processRSS(serverPid)
            result.seconds = Double(now - start) / 1e9
            return true
        }
        return false
    }

    /// Past the drain bound: give up on connections that never finished.
    func overdue(_ now: UInt64) -> Bool { now > end + 10_000_000_000 }
}
