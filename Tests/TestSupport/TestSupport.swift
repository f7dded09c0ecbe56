// Helpers shared by the test targets: loopback sockets driven with plain blocking calls (the
// "client" side of a test, deliberately not io_uring), descriptor and allocation counts, and the
// io_uring availability check. Not part of any product.
import CTestSupport
import Glibc
import Synchronization
import URing

/// Why io_uring cannot be used here, or `nil` when it can.
///
/// Tries a real ring: setup failing with `ENOSYS` or `EPERM` means the kernel lacks or forbids
/// io_uring, and the reason is the library's own diagnosis (``IOUring/unavailableReason(for:)``):
/// `kernel.io_uring_disabled`, a container's seccomp profile, or a kernel without io_uring, each
/// with its fix.
public func ioUringUnavailableReason() -> String? {
    do {
        _ = try Ring(RingOptions(entries: 2, flagPreference: [[]]))
    } catch {
        if IOUring.isUnavailable(error) { return IOUring.unavailableReason(for: error.errno) }
    }
    return nil
}

extension String {
    fileprivate func trimmingCharacters(in set: String) -> String {
        var s = Substring(self)
        while let f = s.first, set.contains(f) { s.removeFirst() }
        while let l = s.last, set.contains(l) { s.removeLast() }
        return String(s)
    }
}

/// Reads a small text file (for /proc).
public func readFile(_ path: String) throws -> String {
    guard let f = fopen(path, "r") else { throw URingError("fopen \(path)", errno: .current) }
    defer { fclose(f) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = fread(&chunk, 1, chunk.count, f)
        if n <= 0 { break }
        bytes += chunk[0..<n]
    }
    return String(decoding: bytes, as: UTF8.self)
}

/// The number of open descriptors of this process (entries of /proc/self/fd, less the one used to list it).
public func openDescriptorCount() -> Int {
    guard let dir = opendir("/proc/self/fd") else { return -1 }
    var count = 0
    while let entry = readdir(dir) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        if name != "." && name != ".." { count += 1 }
    }
    closedir(dir)
    return count - 1
}

/// The highest open descriptor number of this process (RLIMIT_NOFILE limits numbers, not counts).
public func highestOpenDescriptor() -> Int32 {
    guard let dir = opendir("/proc/self/fd") else { return -1 }
    var highest: Int32 = -1
    while let entry = readdir(dir) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        if let n = Int32(name), n > highest { highest = n }
    }
    closedir(dir)
    return highest
}

/// Heap allocations made by the calling thread so far (see CTestSupport's interposer).
public func threadAllocations() -> UInt64 { ctest_thread_allocations() }

/// Whether ``threadAllocations()`` counts (false under sanitizers, which bring their own malloc).
public var allocationCounterAvailable: Bool { ctest_allocation_counter_available() != 0 }

/// A plain blocking TCP (or socketpair) endpoint for the client side of tests.
public struct TestSocket: Sendable {
    /// The descriptor.
    public let fd: Int32
    /// Whether it has been closed, shared by the copies of this value: a second close (a reset,
    /// then the test's deferred close) does nothing, rather than close whatever descriptor has
    /// taken the number since (another test socket, or the server's own in unpooled mode).
    private let closed = ClosedFlag()

    private final class ClosedFlag: Sendable {
        let value = Atomic<Bool>(false)
    }

    /// Wraps an existing descriptor.
    public init(fd: Int32) { self.fd = fd }

    /// Connects to 127.0.0.1:`port` with a blocking socket and a receive timeout.
    public static func connect(port: UInt16, host: String = "127.0.0.1", timeout: Int = 10) throws -> TestSocket {
        let fd = try Sockets.makeTCP()
        let address = SocketAddress(host: host, port: port)!
        let result = address.withSockAddr { Glibc.connect(fd, $0, $1) }
        if result < 0 {
            let e = Errno.current
            Glibc.close(fd)
            throw URingError("connect", errno: e)
        }
        let s = TestSocket(fd: fd)
        s.setTimeout(seconds: timeout)
        try? Sockets.setOption(fd, Int32(IPPROTO_TCP), TCP_NODELAY, 1)
        return s
    }

    /// A TCP socket not yet connected (so a test can hold the descriptor before it connects).
    public static func unconnected() throws -> TestSocket {
        let s = TestSocket(fd: try Sockets.makeTCP())
        s.setTimeout(seconds: 10)
        return s
    }

    /// Connects this socket to 127.0.0.1:`port`.
    public func connect(port: UInt16) throws {
        let address = SocketAddress(host: "127.0.0.1", port: port)!
        if address.withSockAddr({ Glibc.connect(fd, $0, $1) }) < 0 { throw URingError("connect", errno: .current) }
    }

    /// A connected pair of stream sockets (`socketpair(AF_UNIX, SOCK_STREAM)`).
    public static func pair() throws -> (TestSocket, TestSocket) {
        var fds: [Int32] = [0, 0]
        if socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) < 0 {
            throw URingError("socketpair", errno: .current)
        }
        return (TestSocket(fd: fds[0]), TestSocket(fd: fds[1]))
    }

    /// Sets SO_RCVTIMEO and SO_SNDTIMEO so a blocked test fails instead of hanging.
    public func setTimeout(seconds: Int) {
        var tv = timeval(tv_sec: seconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    /// Writes all of `bytes`.
    public func writeAll(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try writeAll($0) }
    }

    /// Writes all of `buffer`.
    public func writeAll(_ buffer: UnsafeRawBufferPointer) throws {
        var offset = 0
        while offset < buffer.count {
            let n = send(fd, buffer.baseAddress! + offset, buffer.count - offset, Int32(MSG_NOSIGNAL))
            if n < 0 {
                let e = Errno.current
                if e == .interrupted { continue }
                throw URingError("send", errno: e)
            }
            offset += n
        }
    }

    /// Reads exactly `count` bytes, or throws (EOF or timeout).
    public func readExactly(_ count: Int) throws -> [UInt8] {
        var result = [UInt8](repeating: 0, count: count)
        var offset = 0
        while offset < count {
            let n = result.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + offset, count - offset, 0) }
            if n < 0 {
                let e = Errno.current
                if e == .interrupted { continue }
                throw URingError("recv", errno: e)
            }
            if n == 0 { throw URingError("recv: EOF after \(offset) of \(count) bytes", errno: .notConnected) }
            offset += n
        }
        return result
    }

    /// Reads once, up to `max` bytes; returns [] at EOF.
    public func readSome(max: Int = 65536) throws -> [UInt8] {
        var result = [UInt8](repeating: 0, count: max)
        while true {
            let n = result.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, max, 0) }
            if n < 0 {
                let e = Errno.current
                if e == .interrupted { continue }
                throw URingError("recv", errno: e)
            }
            return Array(result[0..<n])
        }
    }

    /// Reads until EOF.
    public func readToEnd() throws -> [UInt8] {
        var all: [UInt8] = []
        while true {
            let chunk = try readSome()
            if chunk.isEmpty { return all }
            all += chunk
        }
    }

    /// `shutdown(SHUT_WR)`: a half-close, the peer reads EOF.
    public func shutdownWrite() { Glibc.shutdown(fd, Int32(SHUT_WR)) }

    /// Closes with SO_LINGER 0 so the peer sees a reset (RST) instead of FIN.
    public func reset() {
        guard !closed.value.exchange(true, ordering: .acquiringAndReleasing) else { return }
        var l = linger(l_onoff: 1, l_linger: 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, socklen_t(MemoryLayout<linger>.size))
        Glibc.close(fd)
    }

    /// Closes the descriptor (once: later calls, and a reset after it, do nothing).
    public func close() {
        guard !closed.value.exchange(true, ordering: .acquiringAndReleasing) else { return }
        Glibc.close(fd)
    }
}

/// Bytes written to a ``TestSocket`` from a thread of its own, so that a test can read while they
/// go out. The socket must not be closed while the thread may still write: its number would be
/// reused by the next socket opened, and the rest of these bytes would go into that one (found
/// when a stalled 64 MiB writer of one test put 13 MB into the next test's connection). So a test
/// closes it only after ``wait()`` (the writer finished) or ``stop()`` (a stalled writer ended).
public final class SocketWriter: @unchecked Sendable {  // `thread` and `joined` are used by the creating thread only
    private final class Body {
        let run: () -> Void
        init(_ run: @escaping () -> Void) { self.run = run }
    }
    private let socket: TestSocket
    private var thread = pthread_t()
    private var joined = false

    /// Starts writing `bytes` to `socket` (errors end the writing quietly), then runs `then`.
    public init(_ socket: TestSocket, _ bytes: [UInt8], then: (@Sendable () -> Void)? = nil) {
        self.socket = socket
        let body = Unmanaged.passRetained(Body {
            try? socket.writeAll(bytes)
            then?()
        })
        let created = pthread_create(&thread, nil, { argument in
            Unmanaged<Body>.fromOpaque(argument!).takeRetainedValue().run()
            return nil
        }, body.toOpaque())
        precondition(created == 0, "pthread_create failed: \(created)")
    }

    /// Waits until the writer has finished.
    public func wait() {
        guard !joined else { return }
        pthread_join(thread, nil)
        joined = true
    }

    /// Ends a writer that may be blocked (both directions of the socket are shut, which fails its
    /// send), and waits for it. The socket stays open until the test closes it.
    public func stop() {
        Glibc.shutdown(socket.fd, Int32(SHUT_RDWR))
        wait()
    }

    /// A writer dropped unfinished is stopped: its thread never outlives it.
    deinit { if !joined { stop() } }
}

/// A deterministic byte pattern: byte i of stream `seed`.
public func patternBytes(seed: UInt64, offset: Int = 0, count: Int) -> [UInt8] {
    var out = [UInt8](repeating: 0, count: count)
    for i in 0..<count {
        var x = seed &+ UInt64(offset + i) &* 0x9E37_79B9_7F4A_7C15
        x ^= x >> 31
        x = x &* 0xBF58_476D_1CE4_E5B9
        x ^= x >> 29
        out[i] = UInt8(truncatingIfNeeded: x)
    }
    return out
}

/// How a scripted client ends its connection.
public enum ClientEnding: Sendable, CaseIterable {
    /// Send everything, half-close, read the whole echo to EOF (it must be complete).
    case halfClose
    /// After `sendUntil` bytes sent and `readUntil` read: close with RST.
    case reset
    /// After `sendUntil` bytes sent and `readUntil` read: an ordinary close.
    case close
}

/// One scripted client: what it sends (a window of a shared random block, so every connection's
/// stream differs), how far it goes, and how it ends.
public struct ClientScript: Sendable {
    /// Where this connection's stream starts in the shared block.
    public var start: Int
    /// Bytes in the stream.
    public var length: Int
    /// Bytes to send before ending (all of them for `.halfClose`).
    public var sendUntil: Int
    /// Bytes of echo to read before ending (ignored for `.halfClose`, which reads to EOF).
    public var readUntil: Int
    /// Largest single write.
    public var chunk: Int
    /// How it ends.
    public var ending: ClientEnding

    /// A script.
    public init(start: Int, length: Int, sendUntil: Int, readUntil: Int, chunk: Int, ending: ClientEnding) {
        self.start = start
        self.length = length
        self.sendUntil = sendUntil
        self.readUntil = readUntil
        self.chunk = chunk
        self.ending = ending
    }
}

/// What a batch of scripted clients saw.
public struct ClientOutcome: Sendable, Equatable {
    /// Connections whose script completed as expected.
    public var completed = 0
    /// Echoed bytes that differed from what the connection sent at that offset.
    public var mismatches = 0
    /// Connections that failed (refused, reset or EOF where the script expected more, timeout).
    public var failures = 0
    /// Bytes read back and verified.
    public var verifiedBytes = 0
    /// Creates an empty outcome.
    public init() {}
}

/// A random block shared by scripted clients (seeded, so a failing run can be repeated).
public final class SharedBlock: Sendable {
    /// The bytes; a stream at `start` reads `bytes[(start + i) % count]`.
    public let bytes: [UInt8]
    /// Makes `count` pseudo-random bytes from `seed`.
    public init(count: Int, seed: UInt64) {
        var rng = SplitMix64(seed: seed)
        bytes = (0..<count).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
    }
}

/// SplitMix64: small, seeded, good enough to script clients.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    var state: UInt64
    /// Seeds the generator.
    public init(seed: UInt64) { state = seed }
    /// The next value.
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Runs `scripts` concurrently against 127.0.0.1:`port` from the calling thread with non-blocking
/// sockets and poll(2); every byte read back is checked against what that connection sent.
/// Bounded by `timeout`.
public func runClients(
    _ scripts: [ClientScript], block: SharedBlock, port: UInt16, timeout: Duration = .seconds(60)
) -> ClientOutcome {
    struct State {
        var fd: Int32 = -1
        var sent = 0
        var read = 0
        var halfClosed = false
        var done = false
    }
    var outcome = ClientOutcome()
    var states = [State](repeating: State(), count: scripts.count)
    let blockCount = block.bytes.count
    for i in scripts.indices {
        guard let s = try? TestSocket.connect(port: port) else {
            outcome.failures += 1
            states[i].done = true
            continue
        }
        states[i].fd = s.fd
        _ = fcntl(s.fd, F_SETFL, fcntl(s.fd, F_GETFL) | O_NONBLOCK)
    }
    var scratch = [UInt8](repeating: 0, count: 65536)
    let deadline = ContinuousClock.now + timeout
    func finish(_ i: Int, ok: Bool, reset: Bool = false) {
        if reset {
            var l = linger(l_onoff: 1, l_linger: 0)
            setsockopt(states[i].fd, SOL_SOCKET, SO_LINGER, &l, socklen_t(MemoryLayout<linger>.size))
        }
        Glibc.close(states[i].fd)
        states[i].done = true
        if ok { outcome.completed += 1 } else { outcome.failures += 1 }
    }
    while ContinuousClock.now < deadline {
        var fds: [pollfd] = []
        var owners: [Int] = []
        for i in scripts.indices where !states[i].done {
            let sc = scripts[i]
            var events: Int16 = 0
            if states[i].sent < sc.sendUntil { events |= Int16(POLLOUT) }
            let wantRead = sc.ending == .halfClose ? true : states[i].read < sc.readUntil
            if wantRead { events |= Int16(POLLIN) }
            if sc.ending != .halfClose && states[i].sent >= sc.sendUntil && states[i].read >= sc.readUntil {
                finish(i, ok: true, reset: sc.ending == .reset)
                continue
            }
            if sc.ending == .halfClose && states[i].sent >= sc.length && !states[i].halfClosed {
                Glibc.shutdown(states[i].fd, Int32(SHUT_WR))
                states[i].halfClosed = true
            }
            fds.append(pollfd(fd: states[i].fd, events: events, revents: 0))
            owners.append(i)
        }
        if fds.isEmpty { break }
        let ready = poll(&fds, nfds_t(fds.count), 100)
        if ready <= 0 { continue }
        for (k, p) in fds.enumerated() where p.revents != 0 {
            let i = owners[k]
            let sc = scripts[i]
            if p.revents & Int16(POLLOUT) != 0 && states[i].sent < sc.sendUntil {
                let offset = (sc.start + states[i].sent) % blockCount
                let n = min(sc.chunk, sc.sendUntil - states[i].sent, blockCount - offset)
                let w = block.bytes.withUnsafeBytes { send(states[i].fd, $0.baseAddress! + offset, n, Int32(MSG_NOSIGNAL)) }
                if w > 0 { states[i].sent += w } else if w < 0 && errno != EAGAIN {
                    finish(i, ok: false)
                    continue
                }
            }
            if p.revents & Int16(POLLIN | POLLHUP | POLLERR) != 0 {
                let limit = sc.ending == .halfClose ? scratch.count : min(scratch.count, sc.readUntil - states[i].read)
                if limit == 0 { continue }
                let r = scratch.withUnsafeMutableBytes { recv(states[i].fd, $0.baseAddress!, limit, 0) }
                if r > 0 {
                    var done = 0
                    while done < r {
                        let offset = (sc.start + states[i].read + done) % blockCount
                        let n = min(r - done, blockCount - offset)
                        let same = scratch.withUnsafeBytes { got in
                            block.bytes.withUnsafeBytes { want in memcmp(got.baseAddress! + done, want.baseAddress! + offset, n) == 0 }
                        }
                        if !same {
                            outcome.mismatches += 1
                            break
                        }
                        done += n
                    }
                    states[i].read += r
                    outcome.verifiedBytes += r
                    if states[i].read > states[i].sent { outcome.mismatches += 1 }  // more came back than went out
                } else if r == 0 {
                    let ok = sc.ending == .halfClose && states[i].read == sc.length
                    finish(i, ok: ok)
                } else if errno != EAGAIN {
                    finish(i, ok: false)
                }
            }
        }
    }
    for i in scripts.indices where !states[i].done { finish(i, ok: false) }
    return outcome
}

/// Submits and harvests until `count` completions arrived or `timeout` passed (each wait bounded).
public func collectCompletions(_ ring: borrowing Ring, count: Int, timeout: Duration = .seconds(5)) throws
    -> [Completion]
{
    var seen: [Completion] = []
    let clock = ContinuousClock()
    let deadline = clock.now + timeout
    while seen.count < count && clock.now < deadline {
        try ring.submitAndWait(1, timeout: .milliseconds(50))
        ring.forEachCompletion { seen.append($0) }
    }
    return seen
}
