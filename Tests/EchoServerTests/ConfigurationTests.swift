import EchoServer
import Foundation
import Glibc
import TestSupport
import URing
import XCTest

/// Settings that cannot trap, and io_uring's unavailability explained. Nothing here needs a ring:
/// validation runs before any, and the explanation is tested through its pure core.
final class ConfigurationTests: XCTestCase {
    // MARK: Range checks

    /// One out-of-range value: the setting the message must name, and the mutation (which
    /// returns the bad value, so the message can be checked to quote it).
    typealias BadValue = (setting: String, mutate: (inout ServerConfiguration) -> Any)

    static var badValues: [BadValue] {
        [
            ("threads", { $0.threads = 0; return 0 }),
            ("threads", { $0.threads = 257; return 257 }),
            ("bufferSize", { $0.bufferSize = 63; return 63 }),
            ("bufferSize", { $0.bufferSize = 2 << 20; return 2 << 20 }),
            ("bufferRingEntries", { $0.bufferRingEntries = 1; return 1 }),
            ("bufferRingEntries", { $0.bufferRingEntries = 3000; return 3000 }),
            ("bufferRingEntries", { $0.bufferRingEntries = 65536; return 65536 }),
            ("incrementalBufferSize", { $0.incrementalBufferSize = 63; return 63 }),
            ("incrementalBufferSize", { $0.incrementalBufferSize = (1 << 24) + 1; return (1 << 24) + 1 }),
            ("maxConnections", { $0.maxConnections = 0; return 0 }),
            ("maxConnections", { $0.maxConnections = 1_000_001; return 1_000_001 }),
            ("maxConnections", { $0.maxConnections = .max; return Int.max }),
            ("ringEntries", { $0.ringEntries = 0; return 0 }),
            ("ringEntries", { $0.ringEntries = 100; return 100 }),
            ("ringEntries", { $0.ringEntries = 32768; return 32768 }),
            ("ringEntries", { $0.ringEntries = .max; return UInt32.max }),
            ("spareSlots", { $0.spareSlots = -1; return -1 }),
            ("spareSlots", { $0.spareSlots = 65537; return 65537 }),
            ("spareSlots", { $0.maxConnections = 1_000_000; $0.spareSlots = 65536; return 65536 }),
            ("acceptDepth", { $0.acceptDepth = 0; return 0 }),
            ("acceptDepth", { $0.acceptDepth = 1025; return 1025 }),
            ("backlog", { $0.backlog = 0; return 0 }),
            ("backlog", { $0.backlog = 65536; return 65536 }),
            ("maxPendingBytesPerConnection", { $0.maxPendingBytesPerConnection = 4095; return 4095 }),
            ("maxPendingBytesPerConnection", { $0.maxPendingBytesPerConnection = .max; return Int.max }),
            ("maxOutputBytesPerConnection", { $0.maxOutputBytesPerConnection = 0; return 0 }),
            ("maxOutputBytesPerConnection", { $0.maxOutputBytesPerConnection = (1 << 40) + 1; return (1 << 40) + 1 }),
            ("maxBuffersPerConnection", { $0.maxBuffersPerConnection = 0; return 0 }),
            ("maxBuffersPerConnection", { $0.maxBuffersPerConnection = 32769; return 32769 }),
            ("outboundBuffers", { $0.outboundBuffers = -1; return -1 }),
            ("outboundBuffers", { $0.outboundBuffers = (1 << 20) + 1; return (1 << 20) + 1 }),
            ("mailboxBytes", { $0.mailboxBytes = 2048; return 2048 }),
            ("mailboxBytes", { $0.mailboxBytes = 6000; return 6000 }),
            ("mailboxBytes", { $0.mailboxBytes = 2 << 30; return 2 << 30 }),
            ("idleTimeout", { $0.idleTimeout = .zero; return Duration.zero }),
            ("idleTimeout", { $0.idleTimeout = .seconds(-1); return Duration.seconds(-1) }),
            ("idleTimeout", { $0.idleTimeout = .seconds(7 * 86400 + 1); return Duration.seconds(7 * 86400 + 1) }),
            // The value that trapped (SIGILL) as the CLI's --idle-timeout: seconds × 10^9 beyond Int64.
            ("idleTimeout", { $0.idleTimeout = .seconds(9_223_372_037); return Duration.seconds(9_223_372_037) }),
            ("tickInterval", { $0.tickInterval = .zero; return Duration.zero }),
            ("tickInterval", { $0.tickInterval = .microseconds(999); return Duration.microseconds(999) }),
            ("tickInterval", { $0.tickInterval = .seconds(61); return Duration.seconds(61) }),
            ("tickInterval", { $0.tickInterval = .seconds(Int64.max); return Duration.seconds(Int64.max) }),
            ("stopTimeout", { $0.stopTimeout = .seconds(-1); return Duration.seconds(-1) }),
            ("stopTimeout", { $0.stopTimeout = .seconds(3601); return Duration.seconds(3601) }),
            ("stopTimeout", { $0.stopTimeout = .seconds(Int64.max); return Duration.seconds(Int64.max) }),
            ("stallTimeout", { $0.stallTimeout = .zero; return Duration.zero }),
            ("stallTimeout", { $0.stallTimeout = .seconds(7 * 86400 + 1); return Duration.seconds(7 * 86400 + 1) }),
            ("stallTimeout", { $0.stallTimeout = .seconds(Int64.max); return Duration.seconds(Int64.max) }),
            ("guaranteedOutputBytesPerConnection", { $0.guaranteedOutputBytesPerConnection = 0; return 0 }),
            ("guaranteedOutputBytesPerConnection", { $0.guaranteedOutputBytesPerConnection = (1 << 30) + 1; return (1 << 30) + 1 }),
            // Every session's guarantee is reserved address space: a million sessions of 1 GiB each is not.
            ("guaranteedOutputBytesPerConnection", {
                $0.maxConnections = 1_000_000
                $0.maxOutputBytesPerConnection = 1 << 30
                $0.guaranteedOutputBytesPerConnection = 1 << 30
                return 1 << 30
            }),
        ]
    }

    func testEveryOutOfRangeSettingIsAnInvalidConfigurationNamingSettingRangeAndValue() {
        for (setting, mutate) in Self.badValues {
            var c = ServerConfiguration()
            let value = mutate(&c)
            let label = "\(setting) = \(value)"
            XCTAssertThrowsError(try c.validate(), label) { error in
                guard case .invalidConfiguration(let why) = error as? ServerError else {
                    return XCTFail("\(label): \(error)")
                }
                XCTAssertTrue(why.hasPrefix("\(setting) must be "), "\(label): names the setting: \(why)")
                XCTAssertTrue(why.contains("..."), "\(label): gives the allowed range: \(why)")
                XCTAssertTrue(why.hasSuffix(", got \(value)"), "\(label): quotes the bad value: \(why)")
            }
        }
    }

    func testTheEdgesOfEveryRangeAreAccepted() throws {
        let edges: [(String, (inout ServerConfiguration) -> Void)] = [
            ("defaults", { _ in }),
            ("threads 256", {
                $0.threads = 256
                $0.mailboxBytes = 4096
                $0.outboundBuffers = 0
                $0.bufferRingEntries = 2
            }),
            ("bufferSize 64", { $0.bufferSize = 64; $0.maxPendingBytesPerConnection = 64 }),
            ("bufferSize 1 MiB", {
                $0.bufferSize = 1 << 20
                $0.maxPendingBytesPerConnection = 1 << 20
                $0.outboundBuffers = 16
                $0.bufferRingEntries = 16
                $0.maxConnections = 16
            }),
            ("bufferRingEntries 2", { $0.bufferRingEntries = 2 }),
            ("bufferRingEntries 32768", { $0.bufferRingEntries = 32768 }),
            ("incrementalBufferSize 64", { $0.incrementalBufferSize = 64 }),
            ("incrementalBufferSize 16 MiB", { $0.incrementalBufferSize = 1 << 24 }),
            ("maxConnections 1", { $0.maxConnections = 1 }),
            ("maxConnections 1000000 unpooled", { $0.maxConnections = 1_000_000; $0.mode = .unpooled }),
            ("ringEntries 1", { $0.ringEntries = 1 }),
            ("ringEntries 16384", { $0.ringEntries = 16384 }),
            ("spareSlots 0", { $0.spareSlots = 0 }),
            ("spareSlots 65536", { $0.spareSlots = 65536 }),
            ("acceptDepth 1024", { $0.acceptDepth = 1024 }),
            ("backlog 65535", { $0.backlog = 65535 }),
            ("maxPendingBytesPerConnection 1 GiB", { $0.maxPendingBytesPerConnection = 1 << 30 }),
            ("maxOutputBytesPerConnection 2^40", { $0.maxOutputBytesPerConnection = 1 << 40 }),
            ("maxBuffersPerConnection 32768", { $0.maxBuffersPerConnection = 32768 }),
            ("outboundBuffers 0", { $0.outboundBuffers = 0 }),
            ("mailboxBytes 4096", { $0.mailboxBytes = 4096 }),
            ("idleTimeout nil", { $0.idleTimeout = nil }),
            ("idleTimeout 1 ms", { $0.idleTimeout = .milliseconds(1) }),
            ("idleTimeout 7 days", { $0.idleTimeout = .seconds(7 * 86400) }),
            ("tickInterval 1 ms", { $0.tickInterval = .milliseconds(1) }),
            ("tickInterval 60 s", { $0.tickInterval = .seconds(60) }),
            ("stopTimeout 0", { $0.stopTimeout = .zero }),
            ("stopTimeout 1 hour", { $0.stopTimeout = .seconds(3600) }),
            ("stallTimeout 1 ms", { $0.stallTimeout = .milliseconds(1) }),
            ("stallTimeout 7 days", { $0.stallTimeout = .seconds(7 * 86400) }),
            ("guaranteedOutputBytesPerConnection 1", { $0.guaranteedOutputBytesPerConnection = 1 }),
            ("guaranteedOutputBytesPerConnection 1 GiB", { $0.guaranteedOutputBytesPerConnection = 1 << 30 }),
        ]
        for (label, mutate) in edges {
            var c = ServerConfiguration()
            mutate(&c)
            XCTAssertNoThrow(try c.validate(), label)
        }
    }

    // MARK: Total preallocation

    /// Pooled mode, a buffer per session: `connections` MiB of session buffers and little else.
    func perSessionMiB(connections: Int) -> ServerConfiguration {
        var c = ServerConfiguration()
        c.mode = .pooled
        c.receive = .perSessionBuffer
        c.bufferSize = 1 << 20
        c.maxPendingBytesPerConnection = 1 << 20
        c.outboundBuffers = 0
        c.mailboxBytes = 4096
        c.maxConnections = connections
        return c
    }

    func assertPreallocationRefused(
        _ c: ServerConfiguration, _ label: String, file: StaticString = #filePath, line: UInt = #line
    ) {
        XCTAssertThrowsError(try c.validate(), label, file: file, line: line) { error in
            guard case .invalidConfiguration(let why) = error as? ServerError else {
                return XCTFail("\(label): \(error)", file: file, line: line)
            }
            XCTAssertTrue(why.hasPrefix("the total preallocation"), "\(label): \(why)", file: file, line: line)
            XCTAssertTrue(
                why.contains("exceeds this machine's physical memory"), "\(label): \(why)", file: file, line: line)
        }
    }

    func testPreallocationBeyondMemoryIsAnErrorNotACrash() throws {
        let memory = try XCTUnwrap(Posix.physicalMemoryBytes)
        // A terabyte of session buffers: 1 MiB × 1,000,000 pooled sessions.
        try XCTSkipIf(memory >= 1_000_000 << 20, "a machine with a terabyte of memory")
        let huge = perSessionMiB(connections: 1_000_000)
        assertPreallocationRefused(huge, "1 MiB x 1000000 sessions")
        // start() validates before it allocates anything: the same error, no abort.
        XCTAssertThrowsError(try Server(configuration: huge).start()) { error in
            guard case .invalidConfiguration(let why) = error as? ServerError else { return XCTFail("\(error)") }
            XCTAssertTrue(why.contains("total preallocation"), why)
        }
        // Unpooled sessions allocate their buffers per connection, not up front.
        var unpooled = huge
        unpooled.mode = .unpooled
        XCTAssertNoThrow(try unpooled.validate())
    }

    func testPreallocationLimitIsThisMachinesPhysicalMemory() throws {
        let memory = try XCTUnwrap(Posix.physicalMemoryBytes)
        let mebibytes = memory >> 20
        try XCTSkipIf(mebibytes + 1 > 1_000_000, "more memory than a million 1 MiB sessions take")
        XCTAssertNoThrow(try perSessionMiB(connections: mebibytes / 2).validate(), "half the memory fits")
        assertPreallocationRefused(perSessionMiB(connections: mebibytes + 1), "one MiB session beyond the memory")
    }

    func testPreallocationCountsBufferRingsOutboundBuffersAndMailboxesOfEveryRing() throws {
        let memory = try XCTUnwrap(Posix.physicalMemoryBytes)
        // Buffer rings: 64 rings × 32768 × 1 MiB = 2 TiB, even unpooled.
        var rings = ServerConfiguration()
        rings.mode = .unpooled
        rings.receive = .bufferRing
        rings.threads = 64
        rings.bufferSize = 1 << 20
        rings.maxPendingBytesPerConnection = 1 << 20
        rings.bufferRingEntries = 32768
        rings.outboundBuffers = 0
        rings.mailboxBytes = 4096
        // Outbound buffers: 64 rings × 1048576 × 1 MiB = 64 TiB.
        var outbound = rings
        outbound.receive = .perSessionBuffer
        outbound.outboundBuffers = 1 << 20
        // Mailboxes: 256² × 1 GiB = 64 TiB.
        var mailboxes = ServerConfiguration()
        mailboxes.threads = 256
        mailboxes.mailboxBytes = 1 << 30
        try XCTSkipIf(memory >= 2 << 40, "a machine with two terabytes of memory")
        assertPreallocationRefused(rings, "buffer rings")
        assertPreallocationRefused(outbound, "outbound buffers")
        assertPreallocationRefused(mailboxes, "mailboxes")
        // Without the buffer ring feature no ring is allocated.
        var noRing = rings
        noRing.features.remove(.bufferRing)
        XCTAssertNoThrow(try noRing.validate())
    }

    // MARK: The CLI

    /// Runs `executable` with `arguments`; returns how it ended and its standard error.
    func run(_ executable: URL, _ arguments: [String]) throws -> (Process, String) {
        try runToExit(executable, arguments)
    }

    func testHugeIdleTimeoutExits64NamingTheFlagInsteadOfTrapping() throws {
        let (process, message) = try run(try uringEcho(), ["--idle-timeout", "9223372037"])
        XCTAssertEqual(process.terminationReason, .exit, "no signal (it was SIGILL): \(message)")
        XCTAssertEqual(process.terminationStatus, 64, message)
        XCTAssertTrue(message.contains("--idle-timeout must be 0...604800 seconds"), message)
        XCTAssertTrue(message.contains("got 9223372037"), message)
    }

    func testOutOfRangeFlagsExit64NamingTheFlag() throws {
        let cases: [([String], String)] = [
            (["--stats-interval", "86401"], "--stats-interval must be 0...86400"),
            (["--stats-interval", "9223372036854775807"], "--stats-interval must be 0...86400"),
            (["--idle-timeout=-1"], "--idle-timeout must be 0...604800 seconds (7 days; 0 disables), got -1"),
            (["--threads", "257"], "--threads: invalid configuration: threads must be 1...256, got 257"),
            (["--buffer-size", "63"], "--buffer-size: invalid configuration: bufferSize must be"),
            (["--max-connections", "0"], "--max-connections: invalid configuration: maxConnections must be"),
            (["--accept-depth", "4096"], "--accept-depth: invalid configuration: acceptDepth must be"),
        ]
        for (arguments, expected) in cases {
            let (process, message) = try run(try uringEcho(), arguments)
            XCTAssertEqual(process.terminationReason, .exit, "\(arguments): \(message)")
            XCTAssertEqual(process.terminationStatus, 64, "\(arguments): \(message)")
            XCTAssertTrue(message.contains(expected), "\(arguments): \(message)")
        }
    }

    func testPreallocationBeyondMemoryExits64() throws {
        let memory = try XCTUnwrap(Posix.physicalMemoryBytes)
        // 1,000,000 pooled sessions × 64 KiB = 61 GiB of session buffers.
        try XCTSkipIf(memory >= 1_000_000 << 16, "a machine with more than 61 GiB of memory")
        let arguments = [
            "--buffer-size", "65536", "--max-connections", "1000000", "--mode", "pooled", "--recv", "buffer",
        ]
        let (process, message) = try run(try uringEcho(), arguments)
        XCTAssertEqual(process.terminationStatus, 64, message)
        XCTAssertTrue(message.contains("exceeds this machine's physical memory"), message)
    }

    /// A python3 program that installs a seccomp filter refusing io_uring_setup with EPERM, as
    /// Docker's default profile does (through prctl), then execs its arguments.
    static let refuseRingSetup = """
        import ctypes, os, struct, sys
        libc = ctypes.CDLL(None, use_errno=True)
        # seccomp_data.nr == io_uring_setup (425 on every architecture) ? ERRNO(EPERM) : ALLOW
        program = [(0x20, 0, 0, 0), (0x15, 0, 1, 425), (0x06, 0, 0, 0x00050000 | 1), (0x06, 0, 0, 0x7fff0000)]
        code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *f) for f in program))
        class Program(ctypes.Structure):
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
        fprog = Program(len(program), ctypes.cast(code, ctypes.c_void_p))
        ul = ctypes.c_ulong
        if libc.prctl(38, ul(1), ul(0), ul(0), ul(0)) != 0:
            sys.exit(77)
        if libc.prctl(22, ul(2), ul(ctypes.addressof(fprog)), ul(0), ul(0)) != 0:
            sys.exit(77)
        os.execv(sys.argv[1], sys.argv[1:])
        """

    /// Under a seccomp filter that refuses io_uring_setup, `--driver uring` exits 69 with the
    /// cause and the fix.
    func testRingSetupRefusedBySeccompExits69WithTheCauseAndTheFixWhenIOUringIsRequired() throws {
        let path = try uringEcho().path
        let (process, message) = try run(
            URL(fileURLWithPath: "/usr/bin/env"),
            ["python3", "-c", Self.refuseRingSetup, path, "--port", "0", "--driver", "uring"])
        try XCTSkipIf(
            process.terminationStatus == 127 || process.terminationStatus == 77,
            "python3 or seccomp unavailable here: \(message)")
        XCTAssertEqual(process.terminationStatus, 69, message)
        XCTAssertTrue(
            message.contains("uring-echo: io_uring is unavailable: io_uring_setup failed with EPERM"), message)
        XCTAssertTrue(message.contains("under a seccomp filter (Seccomp: 2 in /proc/self/status)"), message)
        XCTAssertTrue(message.contains("--security-opt seccomp=unconfined"), message)
    }

    /// Under the same filter the default driver (auto) serves on epoll: it says so on its
    /// listening line, echoes, and stops on SIGTERM with exit 0 (it used to exit 69).
    func testRingSetupRefusedBySeccompServesOnEpollByDefault() throws {
        let path = try uringEcho().path
        let (process, _, first) = try launchServer(
            URL(fileURLWithPath: "/usr/bin/env"), ["python3", "-c", Self.refuseRingSetup, path, "--port", "0"])
        defer { if process.isRunning { kill(process.processIdentifier, SIGKILL) } }
        guard first.contains("listening on") else {
            _ = waitForExit(process)
            try XCTSkipIf(
                process.terminationStatus == 127 || process.terminationStatus == 77, "python3 or seccomp unavailable here")
            return XCTFail("no listening line: \(first), exit \(process.terminationStatus)")
        }
        XCTAssertTrue(first.contains("driver=epoll"), first)
        let port = try XCTUnwrap(first.split(separator: " ").first { $0.hasPrefix("127.0.0.1:") }.flatMap { UInt16($0.split(separator: ":")[1]) })
        let payload = patternBytes(seed: 69, count: 200_000)
        XCTAssertTrue(try ServerTestCase.roundTrip(port: port, payload) == payload, "echoed on epoll")
        kill(process.processIdentifier, SIGTERM)
        XCTAssertTrue(waitForExit(process))
        XCTAssertEqual(process.terminationStatus, 0)
    }
}
