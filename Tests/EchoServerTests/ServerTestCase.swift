import SocketPool
import URing
import EchoServer
import EchoServerMetrics
import Foundation
import Glibc
import Metrics
import TestSupport
import XCTest

/// Thread-safe box for results produced on client threads: the project's own pthread lock.
typealias Locked<T> = PthreadLock<T>

extension PthreadLock {
    func with<R>(_ body: (inout Value) -> R) -> R { withLock(body) }
    var get: Value { withLock { $0 } }
}

/// The built `uring-echo` executable next to the test bundle (make test builds it).
func uringEcho() throws -> URL {
    try XCTUnwrap(uringEchoBinary(), "uring-echo must be built next to the tests (make test builds it)")
}

/// A Prometheus text exposition, read by series.
struct Exposition {
    let text: String

    /// The value of one series (`name{labels}` exactly as written), or nil.
    func value(_ series: String) -> Double? {
        for line in text.split(separator: "\n") where line.hasPrefix(series + " ") {
            return Double(line.dropFirst(series.count + 1))
        }
        return nil
    }

    /// The sum of a metric's values over its labels.
    func sum(_ name: String) -> Double {
        text.split(separator: "\n").filter { $0.hasPrefix(name + "{") }
            .compactMap { $0.split(separator: " ").last.flatMap { Double($0) } }.reduce(0, +)
    }
}

/// The driver this run of the suite serves on: io_uring, or epoll when `URING_ECHO_TEST_DRIVER` is
/// `epoll` (`make test` runs the suite on both, the epoll pass under `without-io-uring`).
let testDriver: ServerConfiguration.Driver =
    ProcessInfo.processInfo.environment["URING_ECHO_TEST_DRIVER"] == "epoll" ? .epoll : .ioUring

class ServerTestCase: XCTestCase {
    /// The four combinations every echo test runs under (on epoll the receive strategy is
    /// io_uring's alone, and the pairs differ by mode only).
    static let variants: [(PoolMode, ReceiveStrategy)] = [
        (.pooled, .bufferRing), (.pooled, .perSessionBuffer), (.unpooled, .bufferRing), (.unpooled, .perSessionBuffer),
    ]

    /// The driver this run serves on (``testDriver``).
    static var driver: ServerConfiguration.Driver { testDriver }

    override func setUpWithError() throws {
        if testDriver == .ioUring, let reason = ioUringUnavailableReason() { throw XCTSkip(reason) }
    }

    /// Skips the test on the epoll pass: it tests io_uring itself (`what`).
    func requireIOUring(_ what: String, file: StaticString = #filePath, line: UInt = #line) throws {
        if testDriver == .epoll { throw XCTSkip("io_uring only (\(what)): this pass runs on epoll", file: file, line: line) }
    }

    /// Skips the test, saying which, when the running kernel's opcode probe lacks `features` (and
    /// on the epoll pass: kernel features are io_uring's).
    func requireKernel(_ features: KernelFeatures, file: StaticString = #filePath, line: UInt = #line) throws {
        try requireIOUring("kernel features \(features)", file: file, line: line)
        let ring = try Ring()
        let missing = features.subtracting(KernelFeatures.supported(by: try ring.probe()))
        if !missing.isEmpty {
            throw XCTSkip("this kernel (\(Sockets.kernelRelease)) lacks \(missing)", file: file, line: line)
        }
    }

    func config(_ mode: PoolMode, _ receive: ReceiveStrategy) -> ServerConfiguration {
        var c = ServerConfiguration()
        c.port = 0
        c.mode = mode
        c.receive = receive
        c.driver = testDriver
        c.maxConnections = 2048
        c.tickInterval = .milliseconds(50)
        return c
    }

    /// Starts a server, runs `body` with its port, stops it, and checks that it left nothing
    /// behind: no descriptor, no session, no slot, no request context.
    func withServer(
        _ configuration: ServerConfiguration, file: StaticString = #filePath, line: UInt = #line,
        _ body: (Server<EchoHandler>, UInt16) throws -> Void
    ) throws {
        try withServer(configuration, handler: { EchoHandler() }, file: file, line: line, body)
    }

    /// ``withServer(_:file:line:_:)`` for any handler.
    func withServer<H: ConnectionHandler>(
        _ configuration: ServerConfiguration, handler: @escaping @Sendable () -> H, metrics: MetricsEndpoint? = nil,
        metricsFactory: (any MetricsFactory)? = nil, faults: FaultInjection? = nil, file: StaticString = #filePath,
        line: UInt = #line, _ body: (Server<H>, UInt16) throws -> Void
    ) throws {
        let baseline = openDescriptorCount()
        let server = Server(
            configuration: configuration, metrics: metrics, metricsFactory: metricsFactory, makeHandler: handler)
        if let faults { server.inject(faults) }
        try server.start()
        let port = server.boundAddress!.port
        var failure: Error?
        do { try body(server, port) } catch { failure = error }
        server.stop()
        server.wait()
        let s = server.statistics
        let label = "\(configuration.mode)/\(configuration.receive)"
        XCTAssertEqual(s.active, 0, "\(label): no session left", file: file, line: line)
        XCTAssertEqual(s.sessions.inUse, 0, "\(label): sessions back", file: file, line: line)
        XCTAssertEqual(s.slots.inUse, 0, "\(label): slots back", file: file, line: line)
        XCTAssertEqual(s.contexts.inUse, 0, "\(label): no request in flight", file: file, line: line)
        XCTAssertEqual(s.buffersHeld, 0, "\(label): every provided buffer given back exactly once", file: file, line: line)
        // The server closed its own at once; another server of the test (a proxy's upstream) may
        // still be closing its side of their connections, which on epoll are descriptors too.
        _ = eventually { openDescriptorCount() == baseline }
        XCTAssertEqual(openDescriptorCount(), baseline, "\(label): descriptors back to baseline", file: file, line: line)
        if let failure { throw failure }
    }

    /// Polls `condition` until true or `timeout`.
    func eventually(_ timeout: Duration = .seconds(5), _ condition: () -> Bool) -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if condition() { return true }
            usleep(5_000)
        }
        return condition()
    }

    /// Runs `count` closures on their own threads and waits for all (bounded).
    func parallel(_ count: Int, timeout: TimeInterval = 60, _ body: @escaping @Sendable (Int) -> Void) {
        let group = DispatchGroup()
        for i in 0..<count {
            group.enter()
            Thread {
                body(i)
                group.leave()
            }.start()
        }
        XCTAssertEqual(group.wait(timeout: .now() + timeout), .success, "client threads finished in time")
    }

    /// Echo round trip on a fresh connection: send, half-close, read everything back.
    static func roundTrip(port: UInt16, _ bytes: [UInt8]) throws -> [UInt8] {
        let s = try TestSocket.connect(port: port)
        defer { s.close() }
        try s.writeAll(bytes)
        s.shutdownWrite()
        return try s.readToEnd()
    }
}

/// The built `uring-echo` executable next to the test bundle, if there is one.
func uringEchoBinary() -> URL? {
    let candidates = [
        Bundle.main.bundleURL.deletingLastPathComponent().appendingPathComponent("uring-echo"),
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("uring-echo"),
        Bundle.main.bundleURL.appendingPathComponent("uring-echo"),
    ]
    return candidates.first { FileManager.default.isExecutableFile(atPath: $0.path) }
}

/// Waits for `process` to exit, at most `timeout` seconds; kills it (and reports false) otherwise.
func waitForExit(_ process: Process, timeout: TimeInterval = 15) -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while process.isRunning && Date() < deadline { usleep(10_000) }
    if process.isRunning {
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        return false
    }
    process.waitUntilExit()
    return true
}

/// Runs `executable` with `arguments` (and `environment`, when given) to its end, at most 15 s;
/// returns the ended process and what it wrote to standard error.
func runToExit(_ executable: URL, _ arguments: [String], environment: [String: String]? = nil) throws -> (Process, String) {
    let process = Process()
    process.executableURL = executable
    process.arguments = arguments
    if let environment { process.environment = environment }
    let err = Pipe()
    process.standardError = err
    process.standardOutput = FileHandle.nullDevice
    try process.run()
    // Waiting first bounds the run (a process that does not end is killed, closing the pipe); the
    // messages read afterwards are far smaller than a pipe's buffer.
    XCTAssertTrue(waitForExit(process), "\(arguments) ended")
    let message = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    return (process, message)
}

/// Starts `executable` with `arguments`, stdout piped, stderr discarded; returns the process, the
/// pipe, and what it printed up to its first newline (the server's `listening on …` line).
func launchServer(_ executable: URL, _ arguments: [String]) throws -> (Process, Pipe, String) {
    let process = Process()
    process.executableURL = executable
    process.arguments = arguments
    let out = Pipe()
    process.standardOutput = out
    process.standardError = FileHandle.nullDevice
    try process.run()
    var first = ""
    while !first.contains("\n") {
        let data = out.fileHandleForReading.availableData  // returns at EOF if the child dies
        if data.isEmpty { break }
        first += String(decoding: data, as: UTF8.self)
    }
    return (process, out, first)
}
