import SocketPool
import URing

/// How connections receive.
public enum ReceiveStrategy: String, Sendable, Hashable, CaseIterable {
    /// Each session owns a buffer; one recv at a time into it, then the send of what came (the IOCP
    /// way). Memory grows with the number of connections.
    case perSessionBuffer
    /// Multishot recv over one provided-buffer ring shared by all sessions of a ring: memory is
    /// independent of the connection count.
    case bufferRing
}

/// Optional kernel features. Each can be switched off; the server also drops one by itself when
/// the probe at start shows the kernel lacks it (see ``ServerStatistics/features``).
public struct KernelFeatures: OptionSet, Sendable, Hashable, CustomStringConvertible {
    /// Raw bits.
    public let rawValue: UInt32
    /// Wraps raw bits.
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// One accept request serves many connections (`IORING_ACCEPT_MULTISHOT`, Linux 5.19).
    public static let multishotAccept = KernelFeatures(rawValue: 1 << 0)
    /// Receives over a provided-buffer ring with multishot recv (Linux 6.0); off means
    /// ``ReceiveStrategy/perSessionBuffer`` whatever the configuration asks.
    public static let bufferRing = KernelFeatures(rawValue: 1 << 1)
    /// Pooled sockets live in registered file slots (direct accept, `close_direct`; Linux 5.19);
    /// off means plain descriptors in pooled mode too.
    public static let fixedFiles = KernelFeatures(rawValue: 1 << 2)
    /// `SINGLE_ISSUER|DEFER_TASKRUN` ring setup (Linux 6.1); off starts the flag chain at
    /// `COOP_TASKRUN`.
    public static let deferTaskrun = KernelFeatures(rawValue: 1 << 3)
    /// Rings wake each other for posted messages with `IORING_OP_MSG_RING` (Linux 5.18); off, or
    /// where the probe lacks it, through an eventfd write.
    public static let messageRing = KernelFeatures(rawValue: 1 << 4)
    /// The ring's own descriptor is registered (`io_uring_register_ring_fd`, Linux 5.18), so each
    /// `io_uring_enter` skips a file-table lookup; off, or where registration fails, the plain fd.
    public static let registeredRing = KernelFeatures(rawValue: 1 << 5)
    /// Pooled mode: one multishot accept into kernel-chosen fixed slots (Linux 5.19), instead of a
    /// single-shot accept per pre-chosen slot.
    public static let directMultishotAccept = KernelFeatures(rawValue: 1 << 6)
    /// Multishot receives take several provided buffers per completion (`IORING_RECVSEND_BUNDLE`,
    /// Linux 6.10).
    public static let recvBundles = KernelFeatures(rawValue: 1 << 7)
    /// Provided buffers are consumed incrementally (`IOU_PBUF_RING_INC`, Linux 6.12): several
    /// receives share one large buffer, so buffer memory follows the bytes in flight. The ring has
    /// fewer, larger buffers (``ServerConfiguration/incrementalRing``); a kernel that refuses the
    /// registration gets the ordinary ring. Needs ``bufferRing``.
    public static let incrementalBuffers = KernelFeatures(rawValue: 1 << 8)

    /// What a server uses by default where the kernel has it: everything but
    /// ``incrementalBuffers``, which is opt-in (it receives single-shot, and saves memory only with
    /// a ring sized below the ordinary one; see docs/benchmarks.md).
    public static let defaults: KernelFeatures = all.subtracting(.incrementalBuffers)

    /// Every feature.
    public static let all: KernelFeatures = [
        .multishotAccept, .bufferRing, .fixedFiles, .deferTaskrun, .messageRing, .registeredRing,
        .directMultishotAccept, .recvBundles, .incrementalBuffers,
    ]

    /// The features a kernel can run, read from its opcode probe rather than its version string
    /// (distribution kernels backport): `IORING_OP_MSG_RING` (5.18) means MSG_RING;
    /// `IORING_OP_SOCKET` (5.19) means the release of multishot accept, sparse file tables, direct
    /// accept and provided-buffer rings; `IORING_OP_SEND_ZC` (6.0) means the release of multishot
    /// recv, which the buffer-ring path needs; `MSG_RING` (5.18) also means ring-fd registration.
    /// The features of ``triedAtSetup`` are not opcodes: ring setup tries them and falls back. Registration and `EINVAL` at run time still fall back where the probe was
    /// optimistic.
    /// - Parameter probe: the running kernel's probe (`Ring.probe()`).
    /// - Returns: the features that kernel supports.
    public static func supported(by probe: Probe) -> KernelFeatures {
        var features = triedAtSetup
        if probe.supports(.msgRing) { features.formUnion([.messageRing, .registeredRing]) }
        if probe.supports(.socket) { features.formUnion([.multishotAccept, .fixedFiles, .directMultishotAccept]) }
        if probe.supports(.sendZeroCopy) { features.insert(.bufferRing) }
        return features
    }

    /// Features no opcode reveals: ring setup tries them (flags, feature bits, a trial
    /// registration) and falls back.
    public static let triedAtSetup: KernelFeatures = [.deferTaskrun, .recvBundles, .incrementalBuffers]

    /// `multishotAccept,bufferRing`, or `none`.
    public var description: String {
        let names: [(KernelFeatures, String)] = [
            (.multishotAccept, "multishotAccept"), (.bufferRing, "bufferRing"), (.fixedFiles, "fixedFiles"),
            (.deferTaskrun, "deferTaskrun"), (.messageRing, "messageRing"), (.registeredRing, "registeredRing"),
            (.directMultishotAccept, "directMultishotAccept"), (.recvBundles, "recvBundles"),
            (.incrementalBuffers, "incrementalBuffers"),
        ]
        let on = names.filter { contains($0.0) }.map(\.1)
        return on.isEmpty ? "none" : on.joined(separator: ",")
    }
}

/// Everything a ``Server`` needs to know. Defaults are safe for an exposed machine: loopback only,
/// a connection cap, an idle timeout, bounded per-connection memory.
public struct ServerConfiguration: Sendable, Hashable {
    /// Address to bind (numeric IPv4 or IPv6).
    public var host: String = "127.0.0.1"
    /// Port; 0 lets the kernel pick (read it back from ``Server/boundAddress``).
    public var port: UInt16 = 7777
    /// Rings, each on its own thread with its own `SO_REUSEPORT` listener.
    public var threads: Int = 1
    /// Pooled (preallocated sessions and buffers, fixed slots) or unpooled (allocated per connection).
    public var mode: PoolMode = .pooled
    /// Per-session buffers or a shared buffer ring.
    public var receive: ReceiveStrategy = .bufferRing
    /// Bytes per receive buffer (per session, or per ring buffer).
    public var bufferSize: Int = 4096
    /// Provided buffers per ring (a power of two) for ``ReceiveStrategy/bufferRing``.
    public var bufferRingEntries: Int = 4096
    /// Bytes per buffer of an incremental buffer ring (``KernelFeatures/incrementalBuffers``),
    /// where receives share buffers; see ``incrementalRing`` for the ring it makes.
    public var incrementalBufferSize: Int = 64 * 1024
    /// Connections served at once, over all threads. Clients beyond it are accepted and closed at
    /// once (a clean FIN), and counted in ``ServerStatistics/rejected``.
    public var maxConnections: Int = 4096
    /// Close connections that sent nothing for this long; `nil` disables the check.
    public var idleTimeout: Duration? = .seconds(60)
    /// Fixed-file slots beyond ``maxConnections`` (pooled mode), so a client over the cap can still
    /// be accepted and closed cleanly. With 0, a full slot table pauses accepting instead, and
    /// clients over the cap wait in the listen backlog until a connection closes. (An accept is
    /// only ever posted with a free slot to go into: a direct accept into a full table would drop
    /// the connection.)
    public var spareSlots: Int = 64
    /// Accepts kept posted at once in pooled mode with fixed files, each into its own free slot.
    public var acceptDepth: Int = 8
    /// `listen(2)` backlog.
    public var backlog: Int32 = 1024
    /// Received-but-unsent bytes one connection may hold before its receiving pauses (a client that
    /// sends but never reads costs at most this much).
    public var maxPendingBytesPerConnection: Int = 64 * 1024
    /// Bytes one connection may have queued for sending through `Connection.write(_:)`, counted in
    /// the outbound buffers they take (a 3-byte write may take a whole buffer); a write beyond it is
    /// refused (``WriteResult/full``). The ring's ``outboundBuffers`` are shared: size them for the
    /// number of slow readers a protocol must carry at once (default: 16 at the full bound).
    public var maxOutputBytesPerConnection: Int = 1 << 20
    /// Provided buffers one connection may hold (received and not yet sent) before its receiving
    /// pauses, so one stalled client cannot empty the ring for the others (at most the ring's size).
    public var maxBuffersPerConnection: Int = 16
    /// Outbound buffers (of ``bufferSize`` bytes) per ring that writes are copied into.
    public var outboundBuffers: Int = 4096
    /// Bytes of each mailbox between two rings (one per ordered pair); a message may take a
    /// quarter of it.
    public var mailboxBytes: Int = 1 << 20
    /// Submission queue entries per ring.
    public var ringEntries: UInt32 = 512
    /// Optional kernel features to use when the kernel has them.
    public var features: KernelFeatures = .defaults
    /// How often the loop wakes for housekeeping (idle sweep, paused-accept retry, statistics).
    public var tickInterval: Duration = .milliseconds(250)
    /// Batched waiting, off by default: each loop turn waits until `completions` completions are
    /// ready or `timeout` passes, whichever comes first (one `io_uring_enter` with
    /// `IORING_ENTER_EXT_ARG`), instead of returning at the first. Fewer, fuller turns under load;
    /// up to `timeout` more latency when load is light.
    public var batchWait: BatchWait? = nil
    /// How long a stop waits for connections to wind down before closing the ring regardless.
    public var stopTimeout: Duration = .seconds(5)

    /// The defaults.
    public init() {}

    /// The shape of an incremental buffer ring: buffers of `max(incrementalBufferSize, bufferSize)`
    /// bytes, as many as fit in the ordinary ring's memory (`bufferRingEntries × bufferSize`),
    /// rounded down to a power of two; where fewer than two fit, two buffers of half that memory.
    /// Either way the incremental ring takes no more memory than the ordinary one, and a receive
    /// can always take at least `bufferSize` bytes. (Defaults: 256 buffers of 64 KiB, 16 MiB.)
    public var incrementalRing: (count: Int, bufferSize: Int) {
        let total = bufferRingEntries * bufferSize
        let size = max(incrementalBufferSize, bufferSize)
        var count = 1
        while count * 2 * size <= total && count * 2 <= 32768 { count *= 2 }
        return count >= 2 ? (count, size) : (2, total / 2)
    }

    /// Connections per ring thread.
    public var connectionsPerThread: Int { max(1, (maxConnections + threads - 1) / max(threads, 1)) }

    /// Connections ring `ring` serves at once: ``maxConnections`` split over the rings so that the
    /// total is exactly ``maxConnections`` (the first `maxConnections % threads` rings take one more).
    /// - Parameter ring: the ring index, `0..<threads`.
    public func connections(forRing ring: Int) -> Int {
        let rings = max(threads, 1)
        return max(1, maxConnections / rings + (ring < maxConnections % rings ? 1 : 0))
    }

    /// Checks values a person could get wrong.
    /// - Throws: ``ServerError/invalidConfiguration(_:)`` naming the bad value.
    public func validate() throws(ServerError) {
        // Every numeric setting is range-checked, naming the setting, its range and the value. The
        // bounds keep every product made later (durations in nanoseconds, sizes in bytes) far below
        // Int64's range, so nothing after validation can trap. The full table: docs/operating.md.
        func check(_ ok: Bool, _ setting: String, _ range: String, _ value: Any) throws(ServerError) {
            if !ok { throw .invalidConfiguration("\(setting) must be \(range), got \(value)") }
        }
        func powerOfTwo(_ n: Int, in range: ClosedRange<Int>) -> Bool { range.contains(n) && n.nonzeroBitCount == 1 }
        if SocketAddress(host: host, port: port) == nil {
            throw .invalidConfiguration("host '\(host)' is not a numeric IPv4 or IPv6 address")
        }
        try check((1...256).contains(threads), "threads", "1...256", threads)
        try check((64...1 << 20).contains(bufferSize), "bufferSize", "64...1048576 bytes", bufferSize)
        try check(
            powerOfTwo(bufferRingEntries, in: 2...32768), "bufferRingEntries",
            "a power of two in 2...32768 (the kernel's limit for a provided-buffer ring)", bufferRingEntries)
        try check(
            (64...1 << 24).contains(incrementalBufferSize), "incrementalBufferSize", "64...16777216 bytes",
            incrementalBufferSize)
        try check((1...1_000_000).contains(maxConnections), "maxConnections", "1...1000000", maxConnections)
        // Split over the rings, the total is exactly maxConnections: each ring needs at least one.
        try check(
            maxConnections >= threads, "maxConnections", "at least threads (\(threads)), each ring serves one or more",
            maxConnections)
        // The completion queue is four times the submission queue, and the kernel refuses more than
        // IORING_MAX_CQ_ENTRIES (65536) completions (IORING_MAX_ENTRIES, 32768, submissions).
        try check(
            powerOfTwo(Int(ringEntries), in: 1...16384), "ringEntries",
            "a power of two in 1...16384 (its completion queue, 4 x ringEntries, must fit the kernel's 65536)",
            ringEntries)
        try check((0...65536).contains(spareSlots), "spareSlots", "0...65536", spareSlots)
        // Registered-file table: IORING_MAX_FIXED_FILES (1 << 20) slots per ring.
        try check(
            connectionsPerThread + spareSlots <= 1 << 20, "spareSlots",
            "0...\((1 << 20) - connectionsPerThread) with \(connectionsPerThread) connections per ring "
                + "(connections per ring + spareSlots must fit the kernel's 1048576 registered files)", spareSlots)
        try check((1...1024).contains(acceptDepth), "acceptDepth", "1...1024", acceptDepth)
        try check(
            (1...65535).contains(backlog), "backlog", "1...65535 (the kernel caps it at net.core.somaxconn)", backlog)
        try check(
            (bufferSize...1 << 30).contains(maxPendingBytesPerConnection), "maxPendingBytesPerConnection",
            "bufferSize...1073741824 bytes (\(bufferSize)...1073741824)", maxPendingBytesPerConnection)
        try check(
            (1...1 << 40).contains(maxOutputBytesPerConnection), "maxOutputBytesPerConnection",
            "1...1099511627776 bytes (2^40)", maxOutputBytesPerConnection)
        try check(
            (1...32768).contains(maxBuffersPerConnection), "maxBuffersPerConnection", "1...32768",
            maxBuffersPerConnection)
        try check((0...1 << 20).contains(outboundBuffers), "outboundBuffers", "0...1048576", outboundBuffers)
        try check(
            powerOfTwo(mailboxBytes, in: 4096...1 << 30), "mailboxBytes", "a power of two in 4096...1073741824 bytes",
            mailboxBytes)
        // Durations are compared as Durations, never converted first: a huge one would trap there.
        if let idle = idleTimeout {
            try check(
                idle >= .milliseconds(1) && idle <= .seconds(7 * 86400), "idleTimeout",
                "1 ms...604800 s (7 days), or nil to disable", idle)
        }
        try check(
            tickInterval >= .milliseconds(1) && tickInterval <= .seconds(60), "tickInterval", "1 ms...60 s",
            tickInterval)
        try check(
            stopTimeout >= .zero && stopTimeout <= .seconds(3600), "stopTimeout", "0...3600 s (1 hour)", stopTimeout)
        if let batch = batchWait {
            try check(
                (1...4096).contains(batch.completions), "batchWait.completions", "1...4096", batch.completions)
            try check(
                batch.timeout >= .microseconds(1) && batch.timeout <= .milliseconds(100), "batchWait.timeout",
                "1 µs...100 ms", batch.timeout)
        }

        // What start() allocates up front must fit the machine: a request beyond memory is this
        // error, not an abort in the allocator. Per ring: the receive buffers (the buffer ring, or in
        // pooled mode a buffer per session; the larger of the two, as a ring the kernel refuses a
        // buffer ring falls back to per-session buffers; an incremental ring is never larger), the
        // outbound buffers, and about 0.5 KiB plus a session record of bookkeeping per connection,
        // with an incremental ring its slice table too; then one mailbox per ordered pair of rings.
        // With the bounds above the sum stays below 2^52: no overflow.
        guard let memory = Posix.physicalMemoryBytes else { return }
        let sessionBuffers = mode == .pooled ? connectionsPerThread * bufferSize : 0
        let ringBuffers = receive == .bufferRing && features.contains(.bufferRing) ? bufferRingEntries * bufferSize : 0
        let receiveBytes = max(sessionBuffers, ringBuffers)
        let outboundBytes = outboundBuffers * bufferSize
        let incremental = receive == .bufferRing && features.isSuperset(of: [.bufferRing, .incrementalBuffers])
        let slices =
            incremental
            ? IncrementalBufferReceiver.sliceCapacity(
                sessions: connectionsPerThread, maxHeldPerConnection: min(maxBuffersPerConnection, bufferRingEntries))
                * IncrementalBufferReceiver.bytesPerSlice : 0
        let bookkeeping = connectionsPerThread * (MemoryLayout<Session>.stride + 512) + slices
        let mailboxes = threads * threads * mailboxBytes
        let total = threads * (receiveBytes + outboundBytes + bookkeeping) + mailboxes
        if total > memory {
            func size(_ bytes: Int) -> String {
                let units = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB"]
                var unit = 0
                var scaled = bytes
                while (scaled >= 10 << 10 || scaled >= 1 << 10 && scaled & 1023 == 0) && unit < units.count - 1 {
                    scaled >>= 10
                    unit += 1
                }
                return "\(scaled) \(units[unit])"
            }
            throw .invalidConfiguration(
                "the total preallocation, \(size(total)) (\(total) bytes), exceeds this machine's physical memory, "
                    + "\(size(memory)): per ring \(size(receiveBytes)) of receive buffers, \(size(outboundBytes)) of "
                    + "outbound buffers and \(size(bookkeeping)) of bookkeeping, times \(threads) ring(s), plus "
                    + "\(size(mailboxes)) of mailboxes; lower maxConnections, bufferSize, bufferRingEntries, "
                    + "outboundBuffers, mailboxBytes or threads")
        }
    }
}

/// How many completions a loop turn waits for, and for how long at most (see
/// ``ServerConfiguration/batchWait``).
public struct BatchWait: Sendable, Hashable {
    /// Completions to wait for, 1...4096.
    public var completions: Int
    /// The longest wait, 1 µs...100 ms.
    public var timeout: Duration

    /// Wait for `completions` completions or `timeout`.
    /// - Parameters:
    ///   - completions: completions to wait for.
    ///   - timeout: the longest wait.
    public init(completions: Int, timeout: Duration) {
        self.completions = completions
        self.timeout = timeout
    }
}

/// What can go wrong starting or running a server.
public enum ServerError: Error, Sendable, Hashable, CustomStringConvertible {
    /// A configuration value is out of range.
    case invalidConfiguration(String)
    /// A ring, listener or registration could not be set up.
    case setup(URingError)
    /// The server was started twice.
    case alreadyStarted
    /// ``Server/stop()`` came before ``Server/start()``: a stopped server does not start.
    case stopped
    /// A ring ended on an error it cannot recover from, and the server stopped.
    case ringFailed(ring: Int, URingError)
    /// io_uring cannot be used here: ring setup (`io_uring_queue_init_params`) failed with `EPERM`
    /// or `ENOSYS`. The text names the causes found (`kernel.io_uring_disabled`, a container's
    /// seccomp profile, a kernel without io_uring) and their fixes (`IOUring.unavailableReason(for:)`).
    case ioUringUnavailable(String)

    /// The error for a failed setup step: ``ioUringUnavailable(_:)``, explained, where ring setup
    /// was refused with `EPERM` or `ENOSYS`, ``setup(_:)`` otherwise.
    /// - Parameter error: what the setup step threw.
    package init(setupFailure error: URingError) {
        self =
            IOUring.isUnavailable(error)
            ? .ioUringUnavailable(IOUring.unavailableReason(for: error.errno)) : .setup(error)
    }

    /// A sentence a person can act on.
    public var description: String {
        switch self {
        case .invalidConfiguration(let why): return "invalid configuration: \(why)"
        case .setup(let error): return "server setup failed: \(error)"
        case .alreadyStarted: return "the server was already started"
        case .stopped: return "the server was stopped before it started"
        case .ringFailed(let ring, let error): return "ring \(ring) failed: \(error)"
        case .ioUringUnavailable(let explanation): return explanation
        }
    }
}
