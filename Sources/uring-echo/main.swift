import ArgumentParser
import Dispatch
import EchoServer
import Glibc
import Logging
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
    @Option(help: "Rings, each on its own thread with its own SO_REUSEPORT listener.")
    var threads = 1
    @Option(help: "pooled (preallocated sessions, buffers and fixed slots) or unpooled (allocated per connection).")
    var mode: Mode = .pooled
    @Option(help: "buffer (a buffer per session) or ring (multishot recv over a shared provided-buffer ring).")
    var recv: Receive = .ring
    @Option(help: "Bytes per receive buffer.")
    var bufferSize = 4096
    @Option(help: "Connections served at once; more are accepted and closed at once.")
    var maxConnections = 4096
    @Option(help: "Seconds a connection may stay silent before it is closed; 0 disables.")
    var idleTimeout = 60
    @Option(help: "Pooled mode: accepts kept posted at once, each into its own free slot.")
    var acceptDepth = 8
    @Option(help: "Seconds between statistics lines on stdout; 0 is off.")
    var statsInterval = 0
    @Option(
        name: .customLong("disable"), parsing: .upToNextOption,
        help: "Kernel features to leave unused: multishot-accept, buffer-ring, fixed-files, defer-taskrun.")
    var disabled: [String] = []

    func validate() throws {
        if idleTimeout < 0 { throw ValidationError("--idle-timeout must be 0 or more seconds") }
        if statsInterval < 0 { throw ValidationError("--stats-interval must be 0 or more seconds") }
        for name in disabled where Self.featureNames[name] == nil {
            throw ValidationError(
                "unknown feature '\(name)' for --disable; known: \(Self.featureNames.keys.sorted().joined(separator: ", "))")
        }
        do { try serverConfiguration().validate() } catch { throw ValidationError(error.description) }
    }

    static let featureNames: [String: KernelFeatures] = [
        "multishot-accept": .multishotAccept, "buffer-ring": .bufferRing, "fixed-files": .fixedFiles,
        "defer-taskrun": .deferTaskrun,
    ]

    func serverConfiguration() -> ServerConfiguration {
        var c = ServerConfiguration()
        c.host = host
        c.port = port
        c.threads = threads
        c.mode = mode == .pooled ? .pooled : .unpooled
        c.receive = recv == .ring ? .bufferRing : .perSessionBuffer
        c.bufferSize = bufferSize
        c.maxConnections = maxConnections
        c.idleTimeout = idleTimeout == 0 ? nil : .seconds(idleTimeout)
        c.acceptDepth = acceptDepth
        for name in disabled { c.features.remove(Self.featureNames[name]!) }
        return c
    }

    func run() throws {
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = .notice
            return handler
        }
        let config = serverConfiguration()
        let server = EchoServer(configuration: config)
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
            throw ExitCode(1)
        }
        let stats = server.statistics
        printFlushed(
            "listening on \(server.boundAddress!) threads=\(threads) mode=\(mode.rawValue) recv=\(recv.rawValue) "
                + "buffer-size=\(bufferSize) max-connections=\(maxConnections) idle-timeout=\(idleTimeout)s "
                + "setup=\(stats.setupFlags) features=\(stats.features)")

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
        printFlushed("stopped; final stats: \(server.statistics)")
    }
}

func printFlushed(_ line: String, to fd: Int32 = 1) {
    Posix.write(line + "\n", to: fd)
}

UringEcho.main()
