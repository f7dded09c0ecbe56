/// Which receive path a ring runs, and what it preallocates: decided here once, from the
/// configuration and the features the kernel grants, and used by ``ServerConfiguration/validate()``
/// (with every asked-for feature assumed granted), by ``RingSetup`` (which registers the plan's
/// buffer ring, and falls back to the next plan when the kernel refuses it) and by the ring's start
/// (which makes the plan's ``ReceivePath``).
enum ReceivePlan: Hashable {
    /// Each session's own buffer, one receive at a time (``SessionBufferReceiver``).
    case sessionBuffers
    /// Multishot receives over a shared provided-buffer ring (``BufferRingReceiver``), with or
    /// without bundles, and with or without a total limit per multishot receive.
    case bufferRing(bundles: Bool, limit: Bool)
    /// Capped receives sharing the large buffers of an incremental ring
    /// (``IncrementalBufferReceiver``).
    case incremental

    /// The plan `configuration` asks for with `features` available (bundles only where the kernel
    /// has them: `bundlesGranted`).
    init(_ configuration: ServerConfiguration, features: KernelFeatures, bundlesGranted: Bool = true) {
        if configuration.receive != .bufferRing || !features.contains(.bufferRing) {
            self = .sessionBuffers
        } else if features.contains(.incrementalBuffers) {
            self = .incremental
        } else {
            self = .bufferRing(
                bundles: bundlesGranted && features.contains(.recvBundles), limit: features.contains(.receiveLimit))
        }
    }

    /// The plan to use when the kernel refuses this one's buffer ring: the ordinary ring (with
    /// `bundles` and `limit` if they are available) after the incremental one, per-session buffers
    /// after that.
    func fallback(bundles: Bool, limit: Bool) -> ReceivePlan {
        switch self {
        case .incremental: .bufferRing(bundles: bundles, limit: limit)
        case .bufferRing, .sessionBuffers: .sessionBuffers
        }
    }

    /// The features a plan may use.
    static let receiveFeatures: KernelFeatures = [.bufferRing, .recvBundles, .incrementalBuffers, .receiveLimit]

    /// The receive features this plan uses (the others of ``KernelFeatures/bufferRing``,
    /// ``KernelFeatures/incrementalBuffers`` and ``KernelFeatures/recvBundles`` are not in use).
    var features: KernelFeatures {
        switch self {
        case .sessionBuffers: []
        case .bufferRing(let bundles, let limit):
            KernelFeatures.bufferRing.union(bundles ? .recvBundles : []).union(limit ? .receiveLimit : [])
        case .incremental: [.bufferRing, .incrementalBuffers]
        }
    }

    /// Provided buffers one connection may hold before its receiving pauses.
    static func maxHeldPerConnection(_ configuration: ServerConfiguration) -> Int {
        min(configuration.maxBuffersPerConnection, configuration.bufferRingEntries)
    }

    /// Bytes of receive buffers the plan preallocates per ring for `sessions` connections: the
    /// buffer ring, or in pooled mode a buffer per session (the larger of the two, as a ring the
    /// kernel refuses falls back to per-session buffers; an incremental ring is never larger than
    /// the ordinary one), and the incremental ring's slice table.
    func preallocatedBytes(_ configuration: ServerConfiguration, sessions: Int) -> (buffers: Int, slices: Int) {
        let sessionBuffers = configuration.mode == .pooled ? sessions * configuration.bufferSize : 0
        switch self {
        case .sessionBuffers:
            return (sessionBuffers, 0)
        case .bufferRing:
            return (max(sessionBuffers, configuration.bufferRingEntries * configuration.bufferSize), 0)
        case .incremental:
            let slices = IncrementalBufferReceiver.sliceCapacity(
                sessions: sessions, maxHeldPerConnection: Self.maxHeldPerConnection(configuration))
            return (
                max(sessionBuffers, configuration.bufferRingEntries * configuration.bufferSize),
                slices * IncrementalBufferReceiver.bytesPerSlice
            )
        }
    }
}
