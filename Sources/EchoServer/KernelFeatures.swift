import SocketPool
import URing

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
    /// A multishot receive ends once it has taken a connection's share of the buffer ring
    /// (a total byte limit, Linux 6.17), so completions already on their way cannot carry a
    /// connection past its share before its receive is cancelled; the loop re-arms it. Without
    /// it the share is a soft bound: a batch of completions may overshoot it by about a bundle.
    public static let receiveLimit = KernelFeatures(rawValue: 1 << 9)
    /// A connection's close posts no completion when it succeeds (`IOSQE_CQE_SKIP_SUCCESS`, Linux
    /// 5.17): the connection is recycled once the close is submitted, one completion fewer per
    /// connection. Where the ring lacks `IORING_FEAT_CQE_SKIP`, the close's completion recycles it.
    public static let quietClose = KernelFeatures(rawValue: 1 << 10)
    /// An outbound connection's socket is made by the ring straight into a registered-file slot
    /// (`IORING_OP_SOCKET` into a slot, Linux 5.19; pooled mode), linked to its connect: no
    /// descriptor, no `socket()` call, the slot reused like an accepted connection's. Without it
    /// the socket is a plain descriptor from `socket()`.
    public static let directSocket = KernelFeatures(rawValue: 1 << 11)
    /// The ring sets socket options itself (`IORING_OP_URING_CMD` with `SOCKET_URING_OP_SETSOCKOPT`,
    /// Linux 6.7), on sockets that live only in a registered-file slot: `TCP_NODELAY` on an
    /// outbound socket made straight into its slot (linked before its connect), `SO_LINGER` 0
    /// before an abort's `close_direct`, so the peer gets a reset. Without it, outbound sockets are
    /// plain descriptors (``directSocket`` is not used; `setsockopt(2)` sets the option), and an
    /// abort of a connection in a slot ends with a FIN. A kernel whose opcode probe has
    /// `URING_CMD` but that refuses the command drops it at its first use.
    public static let socketCommands = KernelFeatures(rawValue: 1 << 12)

    /// What a server uses by default where the kernel has it: everything but
    /// ``incrementalBuffers``, which is opt-in (it receives single-shot, and saves memory only with
    /// a ring sized below the ordinary one; see docs/benchmarks.md).
    public static let defaults: KernelFeatures = all.subtracting(.incrementalBuffers)

    /// Every feature.
    public static let all = KernelFeatures(named.map(\.feature))

    /// Every feature and its name: the one list that ``description``, ``all``, ``init(named:)`` and
    /// the executable's `--enable`/`--disable` names (``optionName(_:)``) come from.
    public static let named: [(feature: KernelFeatures, name: String)] = [
        (.multishotAccept, "multishotAccept"), (.bufferRing, "bufferRing"), (.fixedFiles, "fixedFiles"),
        (.deferTaskrun, "deferTaskrun"), (.messageRing, "messageRing"), (.registeredRing, "registeredRing"),
        (.directMultishotAccept, "directMultishotAccept"), (.recvBundles, "recvBundles"),
        (.incrementalBuffers, "incrementalBuffers"), (.receiveLimit, "receiveLimit"),
        (.quietClose, "quietClose"), (.directSocket, "directSocket"), (.socketCommands, "socketCommands"),
    ]

    /// A feature's name in kebab case, as command lines spell it: `recvBundles` → `recv-bundles`.
    /// - Parameter name: a name from ``named``.
    public static func optionName(_ name: String) -> String {
        name.reduce(into: "") { out, c in
            if c.isUppercase { out += "-" + c.lowercased() } else { out.append(c) }
        }
    }

    /// The feature called `name`, in either spelling (`recvBundles`, `recv-bundles`), or every
    /// feature for `all`; nil for an unknown name.
    /// - Parameter name: the name.
    public init?(named name: String) {
        if name == "all" {
            self = .all
            return
        }
        guard let entry = Self.named.first(where: { $0.name == name || Self.optionName($0.name) == name }) else {
            return nil
        }
        self = entry.feature
    }

    /// The features a kernel can run, read from its opcode probe rather than its version string
    /// (distribution kernels backport): `IORING_OP_MSG_RING` (5.18) means MSG_RING;
    /// `IORING_OP_SOCKET` (5.19) means the release of multishot accept, sparse file tables, direct
    /// accept and provided-buffer rings; `IORING_OP_SEND_ZC` (6.0) means the release of multishot
    /// recv, which the buffer-ring path needs; `MSG_RING` (5.18) also means ring-fd registration.
    /// Some features are not opcodes (setup flags, feature bits, a trial registration, a receive
    /// limit): they are tried at setup or at first use, and fall back. Registration and `EINVAL` at
    /// run time still fall back where the probe was optimistic.
    /// - Parameter probe: the running kernel's probe (`Ring.probe()`).
    /// - Returns: the features that kernel supports.
    public static func supported(by probe: Probe) -> KernelFeatures {
        var features = triedAtSetup
        if probe.supports(.msgRing) { features.formUnion([.messageRing, .registeredRing]) }
        if probe.supports(.socket) {
            features.formUnion([.multishotAccept, .fixedFiles, .directMultishotAccept, .directSocket])
        }
        if probe.supports(.sendZeroCopy) { features.insert(.bufferRing) }
        if probe.supports(.uringCommand) { features.insert(.socketCommands) }
        return features
    }

    /// Features no opcode reveals: ring setup tries them (flags, feature bits, a trial
    /// registration), or the first request that uses one does (a receive limit), and falls back.
    package static let triedAtSetup: KernelFeatures = [
        .deferTaskrun, .recvBundles, .incrementalBuffers, .receiveLimit, .quietClose,
    ]

    /// `multishotAccept,bufferRing`, or `none`.
    public var description: String {
        let on = Self.named.filter { contains($0.feature) }.map(\.name)
        return on.isEmpty ? "none" : on.joined(separator: ",")
    }
}
