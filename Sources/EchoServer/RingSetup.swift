import Logging
import SocketPool
import URing

/// Ring and feature setup for one loop, with every fallback: the flag chain, the fixed-file table,
/// the provided-buffer ring (incremental, else ordinary). What the kernel refuses is dropped from
/// ``features`` and logged once.
struct RingSetup: ~Copyable {
    let ring: Ring
    var features: KernelFeatures
    var slots: SlotPool?
    /// How the ring receives.
    let plan: ReceivePlan
    /// The plan's provided-buffer ring (none for ``ReceivePlan/sessionBuffers``).
    var buffers: BufferRing?
    /// Sessions: the ring's share of the connection cap, plus those reserved for the server's
    /// other listeners this ring serves.
    let capacity: Int
    /// The ring's share of the connection cap (the main listener's connections).
    let mainCapacity: Int
    /// Outbound connections this ring may have open (``ServerConfiguration/outboundConnections(forRing:)``).
    let outboundCapacity: Int
    /// Fixed-file slots beyond the sessions, for sockets over the cap to be accepted and closed.
    let spareSlots: Int

    /// - Parameters:
    ///   - configuration: the server's configuration.
    ///   - index: the ring's index.
    ///   - logger: where fallbacks are logged.
    ///   - extraSessions: sessions beyond the ring's share of the cap (the other listeners').
    ///   - faults: faults to meet (tests).
    init(
        _ configuration: ServerConfiguration, ring index: Int, logger: Logger, extraSessions: Int = 0,
        faults: FaultInjection = FaultInjection()
    ) throws(URingError) {
        // The setup flags are a trial down the chain; the rest comes from the kernel's opcode probe,
        // so what it cannot do is dropped before it is tried.
        var features = configuration.features
        var chain = RingOptions.automaticFlags
        if !features.contains(.deferTaskrun) { chain.removeAll { $0.contains(.deferTaskrun) } }
        ring = try Ring(
            RingOptions(
                entries: configuration.ringEntries, flagPreference: chain,
                registerRingDescriptor: features.contains(.registeredRing)))
        if !ring.setupFlags.contains(.deferTaskrun) { features.remove(.deferTaskrun) }
        if faults.refuseMessageRing { ring.refuseMessages() }
        if !ring.features.contains(.cqeSkip) { features.remove(.quietClose) }
        if features.contains(.registeredRing) && !ring.ringDescriptorRegistered {
            logger.notice("registering the ring descriptor failed; io_uring_enter uses the plain descriptor")
            features.remove(.registeredRing)
        }
        let supported = (try? ring.probe()).map { KernelFeatures.supported(by: $0) } ?? []
        if !features.subtracting(supported).isEmpty {
            logger.notice(
                "kernel \(Sockets.kernelRelease) lacks \(features.subtracting(supported)) (opcode probe); using the fallbacks")
            features.formIntersection(supported)
        }
        mainCapacity = configuration.connections(forRing: index)
        outboundCapacity = configuration.outboundConnections(forRing: index)
        capacity = mainCapacity + extraSessions + outboundCapacity
        // Kernel-chosen slots: room for a whole backlog arriving at the connection cap, as a
        // direct accept that finds the table full drops its connection.
        spareSlots =
            configuration.mode == .pooled && features.contains(.directMultishotAccept)
            ? max(configuration.spareSlots, Int(configuration.backlog)) : configuration.spareSlots

        // Fixed slots: pooled mode only. The table has spare slots beyond the connection cap so a
        // client over the cap can still be accepted and closed cleanly.
        if configuration.mode == .pooled && features.contains(.fixedFiles) {
            do {
                let total = UInt32(min(capacity + spareSlots, 1 << 20))
                // Outbound sockets are made into slots of their own, out of the kernel's choice.
                let reserved = features.contains(.directSocket) ? UInt32(min(outboundCapacity, Int(total) - 1)) : 0
                do {
                    slots = try SlotPool(ring: ring, capacity: total, reserved: reserved)
                } catch where reserved > 0 && error.operation == "io_uring_register_file_alloc_range" {
                    // No IORING_REGISTER_FILE_ALLOC_RANGE (before 6.0): plain outbound sockets.
                    logger.notice("a file allocation range was refused (\(error)); outbound sockets are plain descriptors")
                    features.remove(.directSocket)
                    slots = try SlotPool(ring: ring, capacity: total)
                }
            } catch {
                logger.warning("fixed files unavailable (\(error)); pooled mode falls back to plain descriptors")
                features.remove(.fixedFiles)
                slots = nil
            }
        } else {
            features.remove(.fixedFiles)
            slots = nil
        }
        // Sockets made into slots need the slots.
        if slots == nil { features.remove(.directSocket) }

        // The receive plan: the buffer ring it needs, registered here; a refusal falls back to the
        // next plan (incremental → ordinary ring → per-session buffers).
        buffers = nil
        let bundles = ring.features.contains(.recvSendBundle) && features.contains(.recvBundles)
        var plan = ReceivePlan(configuration, features: features, bundlesGranted: bundles)
        while buffers == nil && plan != .sessionBuffers {
            do {
                if plan == .incremental {
                    let shape = configuration.incrementalRing
                    buffers = try BufferRing(
                        registeringWith: ring, group: 1, count: shape.count, bufferSize: shape.bufferSize,
                        flags: faults.refuseIncrementalBufferRing
                            ? [.incremental, BufferRing.Flags(rawValue: 1 << 15)] : .incremental)
                } else {
                    buffers = try BufferRing(
                        registeringWith: ring, group: 1, count: configuration.bufferRingEntries,
                        bufferSize: configuration.bufferSize)
                }
            } catch {
                // Incremental consumption is Linux 6.12: a kernel without it refuses with EINVAL.
                let next = plan.fallback(bundles: bundles, limit: features.contains(.receiveLimit))
                logger.notice("\(plan == .incremental ? "incremental " : "")buffer ring refused (\(error)); using \(next)")
                plan = next
            }
        }
        self.plan = plan
        features.subtract(ReceivePlan.receiveFeatures.subtracting(plan.features))
        // Slots are filled by one multishot accept into kernel-chosen slots, or by pre-posted
        // single-shot accepts (see Acceptor); plain multishot accept serves plain descriptors.
        if slots != nil { features.remove(.multishotAccept) } else { features.remove(.directMultishotAccept) }
        self.features = features
    }
}
