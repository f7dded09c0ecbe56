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

    /// Everything on.
    public static let all: KernelFeatures = [.multishotAccept, .bufferRing, .fixedFiles, .deferTaskrun, .messageRing]

    /// The features a kernel release can run, from its version (`uname -r`, for example
    /// `"6.1.0-18-amd64"`): multishot accept from 5.19; the buffer ring path (multishot recv) and
    /// fixed files (which the close path cancels by fixed fd) from 6.0; `DEFER_TASKRUN` from 6.1.
    /// An unparsable release is assumed recent; ring setup and registration still fall back at run
    /// time if the kernel refuses.
    /// - Parameter release: the kernel release string.
    /// - Returns: the features that release supports.
    public static func supported(byKernelRelease release: String) -> KernelFeatures {
        let numbers = release.split(whereSeparator: { !$0.isNumber }).prefix(2).compactMap { Int($0) }
        guard numbers.count == 2 else { return .all }
        let version = numbers[0] * 1000 + numbers[1]
        var features = KernelFeatures()
        if version >= 5_019 { features.insert(.multishotAccept) }
        if version >= 6_000 { features.formUnion([.bufferRing, .fixedFiles]) }
        if version >= 6_001 { features.insert(.deferTaskrun) }
        if version >= 5_018 { features.insert(.messageRing) }
        return features
    }

    /// `multishotAccept,bufferRing`, or `none`.
    public var description: String {
        let names: [(KernelFeatures, String)] = [
            (.multishotAccept, "multishotAccept"), (.bufferRing, "bufferRing"), (.fixedFiles, "fixedFiles"),
            (.deferTaskrun, "deferTaskrun"), (.messageRing, "messageRing"),
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
    /// Bytes one connection may have queued for sending through ``Connection/write(_:)``; a write
    /// beyond it is refused (``WriteResult/full``).
    public var maxOutputBytesPerConnection: Int = 4 << 20
    /// Provided buffers one connection may hold (received and not yet sent) before its receiving
    /// pauses, so one stalled client cannot empty the ring for the others (at most the ring's size).
    public var maxBuffersPerConnection: Int = 16
    /// Outbound buffers (of ``bufferSize`` bytes) per ring that writes are copied into.
    public var outboundBuffers: Int = 2048
    /// Bytes of each mailbox between two rings (one per ordered pair); a message may take a
    /// quarter of it.
    public var mailboxBytes: Int = 1 << 20
    /// Submission queue entries per ring.
    public var ringEntries: UInt32 = 512
    /// Optional kernel features to use when the kernel has them.
    public var features: KernelFeatures = .all
    /// How often the loop wakes for housekeeping (idle sweep, paused-accept retry, statistics).
    public var tickInterval: Duration = .milliseconds(250)
    /// How long a stop waits for connections to wind down before closing the ring regardless.
    public var stopTimeout: Duration = .seconds(5)

    /// The defaults.
    public init() {}

    /// Connections per ring thread.
    public var connectionsPerThread: Int { max(1, (maxConnections + threads - 1) / max(threads, 1)) }

    /// Checks values a person could get wrong.
    /// - Throws: ``ServerError/invalidConfiguration(_:)`` naming the bad value.
    public func validate() throws(ServerError) {
        if SocketAddress(host: host, port: port) == nil {
            throw .invalidConfiguration("host '\(host)' is not a numeric IPv4 or IPv6 address")
        }
        if threads < 1 || threads > 256 { throw .invalidConfiguration("threads must be 1...256, got \(threads)") }
        if bufferSize < 64 || bufferSize > 1 << 20 {
            throw .invalidConfiguration("buffer size must be 64...1048576 bytes, got \(bufferSize)")
        }
        if bufferRingEntries < 2 || bufferRingEntries > 32768 || bufferRingEntries & (bufferRingEntries - 1) != 0 {
            throw .invalidConfiguration("buffer ring entries must be a power of two in 2...32768, got \(bufferRingEntries)")
        }
        if maxConnections < 1 || maxConnections > 1_000_000 {
            throw .invalidConfiguration("max connections must be 1...1000000, got \(maxConnections)")
        }
        if let idle = idleTimeout, idle <= .zero { throw .invalidConfiguration("idle timeout must be positive") }
        if maxPendingBytesPerConnection < bufferSize {
            throw .invalidConfiguration("max pending bytes per connection must be at least the buffer size")
        }
        if backlog < 1 { throw .invalidConfiguration("backlog must be positive") }
        if spareSlots < 0 { throw .invalidConfiguration("spare slots must be 0 or more") }
        if acceptDepth < 1 || acceptDepth > 1024 { throw .invalidConfiguration("accept depth must be 1...1024") }
        if maxOutputBytesPerConnection < 1 || maxOutputBytesPerConnection > 1 << 40 {
            throw .invalidConfiguration("max output bytes per connection must be 1...2^40, got \(maxOutputBytesPerConnection)")
        }
        if maxBuffersPerConnection < 1 || maxBuffersPerConnection > 32768 {
            throw .invalidConfiguration("max buffers per connection must be 1...32768, got \(maxBuffersPerConnection)")
        }
        if outboundBuffers < 0 || outboundBuffers > 1 << 20 {
            throw .invalidConfiguration("outbound buffers must be 0...1048576, got \(outboundBuffers)")
        }
        if mailboxBytes < 4096 || mailboxBytes > 1 << 30 || mailboxBytes & (mailboxBytes - 1) != 0 {
            throw .invalidConfiguration("mailbox bytes must be a power of two in 4096...2^30, got \(mailboxBytes)")
        }
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

    /// A sentence a person can act on.
    public var description: String {
        switch self {
        case .invalidConfiguration(let why): return "invalid configuration: \(why)"
        case .setup(let error): return "server setup failed: \(error)"
        case .alreadyStarted: return "the server was already started"
        }
    }
}
