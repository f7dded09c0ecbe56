import ArgumentParser
import Dispatch
import EchoServer
import EchoServerMetrics
import Glibc
import Logging
import Metrics
import Prometheus
import URing

/// `uring-echo`: the echo server on the io_uring completion loop.
struct UringEcho: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "uring-echo",
        abstract: "A TCP echo server on io_uring's completion queue (IOCP-style, pooled or unpooled)."
    )

    enum Mode: String, ExpressibleByArgument, CaseIterable { case pooled, unpooled }
    enum Receive: String, ExpressibleByArgument, CaseIterable { case buffer, ring }

    @Option(help: "Address to bind (numeric IPv4 or IPv6).")
    var host = "127.0.0.1"
    @Option(help: "Port to listen on; 0 picks a free one.")
    var port: UInt16 = 7777
    @Option(help: "Rings, each on its own thread with its own SO_REUSEPORT listener (1...256).")
    var threads = 1
    @Option(help: "pooled (preallocated sessions, buffers and fixed slots) or unpooled (allocated per connection).")
    var mode: Mode = .pooled
    @Option(help: "auto (io_uring where allowed, else epoll), uring (io_uring only: exits 69 where refused) or epoll.")
    var driver = "auto"
    @Option(help: "io_uring: buffer (a buffer per session) or ring (multishot recv over a shared provided-buffer ring; the default).")
    var recv: Receive? = nil
    @Option(help: "Bytes per receive buffer (64...1048576).")
    var bufferSize = 4096
    @Option(help: "Connections served at once (1...1000000); more are accepted and closed at once.")
    var maxConnections = 4096
    @Option(help: "Seconds a connection may make no progress either way (nothing received, nothing sent taken by the peer) before it is closed (1...604800, 7 days); 0 disables.")
    var idleTimeout = 60
    @Option(help: "Seconds queued output may go untaken by the peer before the connection is reset (1...604800); on with or without --idle-timeout.")
    var stallTimeout = 60
    @Option(help: "io_uring, pooled mode: accepts kept posted at once, each into its own free slot (1...1024; 8 by default).")
    var acceptDepth: Int? = nil
    @Option(help: "Seconds between statistics lines on stdout (1...86400); 0 is off.")
    var statsInterval = 0
    @Option(help: "io_uring, batched waiting: each loop turn waits for N completions or --batch-timeout (1...4096; 0, the default, is off).")
    var batchWait: Int? = nil
    @Option(help: "io_uring, batched waiting's longest wait, in microseconds (1...100000; 50 by default).")
    var batchTimeout: Int? = nil
    @Option(
        help: ArgumentHelp(
            "Serve Prometheus metrics at http://HOST:PORT/metrics (port 0 picks one); off by default.",
            valueName: "host:port"))
    var metrics: String? = nil
    @Option(
        name: .customLong("disable"), parsing: .upToNextOption,
        help: ArgumentHelp(
            "Kernel features to leave unused: \(featureOptionNames.joined(separator: ", ")), or all (what Linux 5.15 offers)."))
    var disabled: [String] = []
    @Option(
        name: .customLong("enable"), parsing: .upToNextOption,
        help: "Opt-in kernel features to use where the kernel has them: incremental-buffers (see docs/benchmarks.md).")
    var enabled: [String] = []
    @Option(help: "Buffers in the provided-buffer ring (a power of two, 2...32768); with incremental buffers, the ring's memory is this times --buffer-size.")
    var bufferRingEntries = 4096

    /// The driver `--driver` names.
    var chosenDriver: ServerConfiguration.Driver { ServerConfiguration.Driver(flag: driver) ?? .automatic }

    /// The io_uring-only settings given on the command line (with an explicit `--driver epoll` they
    /// are an error; where automatic chose epoll, they are named once as not applying).
    var ioUringOnlyFlags: [String] {
        var given: [String] = []
        if recv != nil { given.append("--recv") }
        if acceptDepth != nil { given.append("--accept-depth") }
        if batchWait != nil { given.append("--batch-wait") }
        if batchTimeout != nil { given.append("--batch-timeout") }
        if !enabled.isEmpty { given.append("--enable") }
        if !disabled.isEmpty { given.append("--disable") }
        if getenv("URING_ECHO_INJECT_ENTER_ERRNO") != nil { given.append("URING_ECHO_INJECT_ENTER_ERRNO") }
        return given
    }

    func validate() throws {
        guard ServerConfiguration.Driver(flag: driver) != nil else {
            throw ValidationError("--driver must be auto, uring or epoll, got '\(driver)'")
        }
        if chosenDriver == .epoll && !ioUringOnlyFlags.isEmpty {
            throw ValidationError("\(ioUringOnlyFlags.joined(separator: ", ")): io_uring only, not with --driver epoll")
        }
        // Checked before serverConfiguration() and run() make durations of them: a huge value must
        // never reach a conversion to nanoseconds, which traps.
        if !(0...604_800).contains(idleTimeout) {
            throw ValidationError("--idle-timeout must be 0...604800 seconds (7 days; 0 disables), got \(idleTimeout)")
        }
        if !(1...604_800).contains(stallTimeout) {
            throw ValidationError("--stall-timeout must be 1...604800 seconds (7 days), got \(stallTimeout)")
        }
        if let batchWait, !(0...4096).contains(batchWait) {
            throw ValidationError("--batch-wait must be 0...4096 completions (0 is off), got \(batchWait)")
        }
        if let batchTimeout, !(1...100_000).contains(batchTimeout) {
            throw ValidationError("--batch-timeout must be 1...100000 microseconds, got \(batchTimeout)")
        }
        if !(0...86_400).contains(statsInterval) {
            throw ValidationError("--stats-interval must be 0...86400 seconds (1 day; 0 is off), got \(statsInterval)")
        }
        if let metrics, Self.parseHostPort(metrics) == nil {
            throw ValidationError(
                "--metrics must be HOST:PORT with a numeric IPv4 or IPv6 host ([::1]:9100 for IPv6) and a port 0...65535, got '\(metrics)'")
        }
        for name in enabled where KernelFeatures(named: name) == nil {
            throw ValidationError(
                "unknown feature '\(name)' for --enable; known: \((Self.featureOptionNames + ["all"]).joined(separator: ", "))")
        }
        for name in disabled where KernelFeatures(named: name) == nil {
            throw ValidationError(
                "unknown feature '\(name)' for --disable; known: \((Self.featureOptionNames + ["all"]).joined(separator: ", "))")
        }
        do { try serverConfiguration().validate() } catch {
            // The library names its settings; say which flag sets the one at fault.
            let flags = [
                "host": "--host", "threads": "--threads", "bufferSize": "--buffer-size",
                "maxConnections": "--max-connections", "acceptDepth": "--accept-depth",
                "maxPendingBytesPerConnection": "--buffer-size", "bufferRingEntries": "--buffer-ring-entries",
            ]
            let flag = flags.first { error.description.hasPrefix("invalid configuration: \($0.key) ") }
            throw ValidationError((flag.map { "\($0.value): " } ?? "") + error.description)
        }
    }

    /// `127.0.0.1:9100` or `[::1]:9100`.
    static func parseHostPort(_ text: String) -> (host: String, port: UInt16)? {
        guard let colon = text.lastIndex(of: ":"), let port = UInt16(text[text.index(after: colon)...]) else { return nil }
        var host = String(text[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard SocketAddress(host: host, port: port) != nil else { return nil }
        return (host, port)
    }

    /// The `--enable`/`--disable` names: each feature's, in kebab case.
    static let featureOptionNames = KernelFeatures.named.map { KernelFeatures.optionName($0.name) }

    func serverConfiguration() -> ServerConfiguration {
        var c = ServerConfiguration()
        c.host = host
        c.port = port
        c.threads = threads
        c.mode = mode == .pooled ? .pooled : .unpooled
        c.driver = chosenDriver
        c.receive = (recv ?? .ring) == .ring ? .bufferRing : .perSessionBuffer
        c.bufferSize = bufferSize
        c.maxConnections = maxConnections
        c.idleTimeout = idleTimeout == 0 ? nil : .seconds(idleTimeout)
        c.stallTimeout = .seconds(stallTimeout)
        c.acceptDepth = acceptDepth ?? 8
        if let batchWait, batchWait > 0 {
            c.batchWait = BatchWait(completions: batchWait, timeout: .microseconds(batchTimeout ?? 50))
        }
        c.bufferRingEntries = bufferRingEntries
        for name in enabled { c.features.formUnion(KernelFeatures(named: name)!) }
        for name in disabled { c.features.remove(KernelFeatures(named: name)!) }
        return c
    }

    func run() throws {
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = .notice
            return handler
        }
        let config = serverConfiguration()
        var endpoint: MetricsEndpoint? = nil
        if let metrics, let (host, port) = Self.parseHostPort(metrics) {
            // The swift-metrics backend: the server's counters land in this registry, which the
            // endpoint (served on ring 0 by the server's own loop) renders.
            let registry = PrometheusCollectorRegistry()
            MetricsSystem.bootstrap(PrometheusMetricsFactoryWithHelp(registry: registry))
            endpoint = MetricsEndpoint(host: host, port: port, registry: registry)
        }
        let server = Server(configuration: config, metrics: endpoint)
        // SIGINT/SIGTERM: stop gracefully. Set up before any thread starts so every thread inherits
        // the dispositions; the handlers run on a dispatch queue, not in signal context.
        var sources: [DispatchSourceSignal] = []
        for sig in [SIGINT, SIGTERM] {
            Posix.ignore(signal: sig)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            source.setEventHandler { server.stop() }
            source.resume()
            sources.append(source)
        }
        do {
            try server.start()
        } catch {
            printFlushed("uring-echo: \(error)", to: 2)
            // EX_UNAVAILABLE: what must change is the machine or the container, not the flags.
            if case .ioUringUnavailable = error { throw ExitCode(69) }
            throw ExitCode(1)
        }
        let stats = server.statistics
        let onEpoll = stats.driver == .epoll
        if onEpoll && !ioUringOnlyFlags.isEmpty {
            printFlushed("uring-echo: on epoll, \(ioUringOnlyFlags.joined(separator: ", ")) \(ioUringOnlyFlags.count == 1 ? "does" : "do") not apply (io_uring only)", to: 2)
        }
        let batch = (batchWait ?? 0) == 0 ? "off" : "\(batchWait!)/\(batchTimeout ?? 50)us"
        // The io_uring-only fields say the driver rather than pretend: epoll has no setup flags,
        // kernel features, receive strategy or batched waiting.
        let ioUringFields =
            onEpoll
            ? "recv=driver=epoll batch-wait=driver=epoll setup=driver=epoll features=driver=epoll"
            : "recv=\((recv ?? .ring).rawValue) batch-wait=\(batch) setup=\(stats.setupFlags) features=\(stats.features)"
        printFlushed(
            "listening on \(server.boundAddress!) threads=\(threads) mode=\(mode.rawValue) driver=\(onEpoll ? "epoll" : "uring") "
                + "buffer-size=\(bufferSize) max-connections=\(maxConnections) idle-timeout=\(idleTimeout)s stall-timeout=\(stallTimeout)s "
                + ioUringFields)
        if let address = server.metricsAddress { printFlushed("metrics on http://\(address)/metrics") }

        // Fault injection for the tests of the ring-failure path: an errno for ring 0's next enter.
        if let text = getenv("URING_ECHO_INJECT_ENTER_ERRNO"), let errno = Int32(String(cString: text)) {
            server.injectEnterFailure(ring: 0, Errno(rawValue: errno))
        }

        var timer: DispatchSourceTimer? = nil
        if statsInterval > 0 {
            let t = DispatchSource.makeTimerSource(queue: .global())
            t.schedule(deadline: .now() + .seconds(statsInterval), repeating: .seconds(statsInterval))
            t.setEventHandler { printFlushed("stats: \(server.statistics)") }
            t.resume()
            timer = t
        }
        server.wait()
        timer?.cancel()
        sources.forEach { $0.cancel() }
        if let failure = server.failure {
            printFlushed("uring-echo: \(failure); final stats: \(server.statistics)", to: 2)
            throw ExitCode(70)  // EX_SOFTWARE
        }
        printFlushed("stopped; final stats: \(server.statistics)")
    }
}

func printFlushed(_ line: String, to fd: Int32 = 1) {
    Posix.write(line + "\n", to: fd)
}

UringEcho.main()
