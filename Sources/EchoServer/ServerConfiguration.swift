import SocketPool
import URing

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
    /// Outbound connections (``RingContext/connect(to:timeout:)``) open at once, over all threads,
    /// split over the rings as ``maxConnections`` is. Each takes a session (and in pooled mode a
    /// registered-file slot) beside the inbound ones, preallocated like them; 0, the default,
    /// makes no room: every connect fails with ``ConnectFailure/capReached``.
    public var maxOutboundConnections: Int = 0
    /// Close connections with no progress either way for this long: nothing received, and nothing
    /// of what they queued taken by the peer (a connection that only sends, a download or a feed,
    /// is not idle while the peer reads). `nil` disables the check; stalled output is closed
    /// regardless (``stallTimeout``).
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
    /// Outbound buffer bytes every connection is guaranteed, whatever the others hold: a write of
    /// this much to a connection whose queue has drained always fits (``ConnectionHandle/largestWrite``
    /// is at most this). Beyond it a connection takes buffers from the ring's shared pool
    /// (``outboundBuffers``), at most as many as stay free there, so connections that do not
    /// drain share the pool and leave as much for the rest. Counted in whole buffers of
    /// ``bufferSize``. The guarantee is reserved address space, not memory: pages are used only
    /// for bytes actually queued (with every connection stalled at its guarantee, connections ×
    /// this).
    public var guaranteedOutputBytesPerConnection: Int = 64 * 1024
    /// How long a connection's queued output may go without the peer taking any of it (a send
    /// completing) before the connection is closed with a reset: a peer that stopped reading.
    /// Independent of ``idleTimeout``, and on without it.
    public var stallTimeout: Duration = .seconds(60)
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
    /// Optional kernel features to use when the kernel has them (io_uring only).
    public var features: KernelFeatures = .defaults
    /// Which driver performs the I/O (``Driver/automatic`` by default: io_uring where allowed, else
    /// epoll).
    public var driver: Driver = .automatic

    /// How a server's rings do their I/O: every ring of a server the same.
    public enum Driver: String, Sendable, Hashable, CaseIterable, CustomStringConvertible {
        /// io_uring where ring setup and the opcode probe give what the server needs, else epoll:
        /// decided once at start, with one notice naming why (a seccomp profile, the sysctl, a
        /// kernel without io_uring, locked memory).
        case automatic
        /// io_uring only: where it is refused, the server does not start
        /// (``ServerError/ioUringUnavailable(_:)``).
        case ioUring
        /// epoll: readiness and non-blocking system calls, where io_uring is refused (containers'
        /// default seccomp profiles) or by choice. Kernel features (``features``) do not apply.
        case epoll

        /// `automatic`, `uring`, `epoll`: as the `--driver` flag spells it.
        public var description: String {
            switch self {
            case .automatic: "auto"
            case .ioUring: "uring"
            case .epoll: "epoll"
            }
        }

        /// The driver a `--driver` value names (`auto`, `uring`, `epoll`), or nil.
        /// - Parameter flag: the value.
        public init?(flag: String) {
            guard let driver = Self.allCases.first(where: { $0.description == flag }) else { return nil }
            self = driver
        }
    }
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

    /// Outbound buffers each connection is guaranteed (``guaranteedOutputBytesPerConnection``, at most
    /// the output bound, in whole buffers; at least one).
    public var guaranteedOutboundBuffers: Int {
        let bytes = min(max(guaranteedOutputBytesPerConnection, 1), max(maxOutputBytesPerConnection, 1))
        return max(1, (bytes + bufferSize - 1) / max(bufferSize, 1))
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

    /// Outbound connections ring `ring` may have open at once: ``maxOutboundConnections`` split
    /// over the rings (the first `maxOutboundConnections % threads` rings take one more).
    /// - Parameter ring: the ring index, `0..<threads`.
    public func outboundConnections(forRing ring: Int) -> Int {
        let rings = max(threads, 1)
        return maxOutboundConnections / rings + (ring < maxOutboundConnections % rings ? 1 : 0)
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
        try check(
            (0...1_000_000).contains(maxOutboundConnections), "maxOutboundConnections", "0...1000000",
            maxOutboundConnections)
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
            (1...1 << 30).contains(guaranteedOutputBytesPerConnection), "guaranteedOutputBytesPerConnection",
            "1...1073741824 bytes", guaranteedOutputBytesPerConnection)
        // The guarantees are reserved address space, every session's (the other listeners' take a
        // few more): keep all the rings' far inside a process's 128 TiB.
        let sessionsPerRing = connectionsPerThread + (maxOutboundConnections + threads - 1) / threads + 1024
        // (The shared pool, outboundBuffers × bufferSize, is preallocation, checked against the
        // machine's memory below.)
        let reserved = threads * sessionsPerRing * guaranteedOutboundBuffers * bufferSize
        try check(
            reserved <= 1 << 45, "guaranteedOutputBytesPerConnection",
            "1...\((1 << 45) / (threads * sessionsPerRing)) bytes with \(sessionsPerRing) sessions on each of \(threads) "
                + "ring(s) (every session's guarantee is reserved address space, 32 TiB at most)",
            guaranteedOutputBytesPerConnection)
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
        try check(
            stallTimeout >= .milliseconds(1) && stallTimeout <= .seconds(7 * 86400), "stallTimeout",
            "1 ms...604800 s (7 days)", stallTimeout)
        if let batch = batchWait {
            try check(
                (1...4096).contains(batch.completions), "batchWait.completions", "1...4096", batch.completions)
            try check(
                batch.timeout >= .microseconds(1) && batch.timeout <= .milliseconds(100), "batchWait.timeout",
                "1 µs...100 ms", batch.timeout)
        }

        // What start() allocates up front must fit the machine: a request beyond memory is this
        // error, not an abort in the allocator. Per ring: the receive plan's buffers (and slice
        // table), the outbound buffers, and about 0.5 KiB plus a connection record of bookkeeping
        // per connection; then one mailbox per ordered pair of rings.
        // With the bounds above the sum stays below 2^52: no overflow.
        guard let memory = Posix.physicalMemoryBytes else { return }
        let (receiveBytes, sliceBytes) = ReceivePlan(self, features: features).preallocatedBytes(
            self, sessions: connectionsPerThread)
        let outboundBytes = outboundBuffers * bufferSize
        let bookkeeping = connectionsPerThread * (MemoryLayout<ConnectionRecord>.stride + 512) + sliceBytes
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
