import CSystemIO
import Glibc
import Logging
import SocketPool
import URing

/// The io_uring driver's core: ``LoopCore`` with the ring, its registered-file slots, and how the
/// lifecycle's decisions become requests (``post(_:_:)``: sends, cancels by `user_data`, closes,
/// quiet where the kernel allows, a shutdown), and outbound connections made by the ring
/// (``connect(to:timeout:)``: a socket straight into a slot, linked to its connect and timeout).
final class URingCore: LoopCore {
    let ring: Ring
    @exclusivity(unchecked) var slots: SlotPool?
    /// Whether a connection's close posts a completion (``KernelFeatures/quietClose``: not).
    let quietClose: Bool

    init(
        configuration: ServerConfiguration, setup: consuming RingSetup, provided: ProvidedSegments,
        ringIndex: Int, mailboxes: Mailboxes, logger: Logger, listeners: RingListeners
    ) throws(URingError) {
        ring = setup.ring
        slots = setup.slots.take()
        quietClose = setup.features.contains(.quietClose)
        try super.init(
            configuration: configuration, capacity: setup.capacity, mainCapacity: setup.mainCapacity,
            outboundCapacity: setup.outboundCapacity, sharedContexts: setup.spareSlots, features: setup.features,
            provided: provided, ringIndex: ringIndex, mailboxes: mailboxes, logger: logger, listeners: listeners)
        stats.setupFlags = ring.setupFlags
    }

    var useSlots: Bool { slots != nil }

    /// ``RingContext/connect(to:timeout:)``: a session (and a slot) for the connection, then its
    /// socket (straight into the slot where the ring can), its connect and the connect's timeout,
    /// linked, in one go.
    override func connect(to address: SocketAddress, timeout: Duration) -> Result<ConnectionID, ConnectFailure> {
        guard !stopping else { return .failure(.cancelled) }
        guard outboundOpen < outboundCapacity else {
            stats.connectsCapped &+= 1
            return .failure(.capReached)
        }
        // Straight into a slot only where the ring can set TCP_NODELAY on it too (socket commands,
        // Linux 6.7); otherwise a plain socket, whose option setsockopt(2) sets.
        let direct = slots != nil && features.isSuperset(of: Self.directSocketFeatures)
        let file: FileRef
        var slot: Lease?
        if direct {
            guard let s = slots?.acquireReserved() else {
                stats.connectsCapped &+= 1
                return .failure(.capReached)
            }
            slot = s
            file = .slot(s.index)
        } else {
            do throws(URingError) {
                let fd = try Sockets.makeTCP(family: address.family)
                // Small writes (a request in parts) go out at once, not behind the peer's delayed
                // ACK. Accepted sockets inherit it from their listener.
                try? Sockets.setOption(fd, Int32(IPPROTO_TCP), TCP_NODELAY, 1)
                file = .fd(fd)
            } catch {
                stats.connectsFailed &+= 1
                return .failure(.failed(error.errno))
            }
        }
        guard let c = sessions.acquire(file: file, slot: slot) else {
            if let slot { slots?.release(slot) } else { _ = try? Sockets.close(file.raw) }
            stats.connectsCapped &+= 1
            return .failure(.capReached)
        }
        openOutbound(c)
        do throws(URingError) {
            // The chain goes in whole: a submission that ended inside it would break the link.
            try ring.reserveSubmissions(4)
            if let slot {
                // No SOCK_CLOEXEC: the kernel refuses it for a slot (a slot is no descriptor to inherit).
                try ring.prepareSocket(
                    domain: address.family, type: Int32(SOCK_STREAM.rawValue),
                    intoSlot: slot.index, tag: c.pointee.tag(.socket), options: .link)
                c.pointee.lifecycle.posted(.socket)
                // TCP_NODELAY on the slot, before the connect: hard-linked (the connect goes on
                // if it fails), and completing only if it fails (``ControlTag/socketOption``).
                try ring.prepareSetSocketOption(
                    file, .noDelay, tag: ControlTag.socketOption.rawValue, options: Self.optionRequest)
            }
            try ring.prepareConnect(file, to: address, tag: c.pointee.tag(.connect), options: .link)
            c.pointee.lifecycle.posted(.connect)
            try ring.prepareLinkTimeout(timeout, tag: c.pointee.tag(.connectTimeout))
            c.pointee.lifecycle.posted(.connectTimeout)
        } catch {
            // No room in the submission queue even after a submit: give everything back.
            outboundOpen -= 1
            if let slot { slots?.release(slot) } else { _ = try? Sockets.close(file.raw) }
            _ = sessions.release(c)
            stats.connectsFailed &+= 1
            return .failure(.failed(error.errno))
        }
        return .success(connectionID(c))
    }


    /// Posts the send of what `c` has queued: one `send` for one segment (the echo path), one
    /// gathering `sendmsg` for several, so a connection that has fallen behind catches up in
    /// few requests. The caller has marked the send in flight.
    @inline(__always)
    func postSend(_ c: ConnectionRef) throws(URingError) {
        if queue.hasSeveral(c) {
            try ring.prepareSendMessage(c.pointee.session.file, queue.gather(c), tag: c.pointee.tag(.send))
        } else {
            guard let bytes = queue.head(c) else { return }
            try ring.prepareSend(c.pointee.session.file, from: bytes, tag: c.pointee.tag(.send))
        }
        c.pointee.lastProgress = now
    }

    /// Posts what ``ConnectionLifecycle/settle(_:_:)`` decided, but the receive (the loop's
    /// receive path posts that): the cancels (by `user_data`, Linux 5.5), the send, the close.
    /// A send and a close (the hot paths) inline; anything else in ``postAll(_:_:)``.
    @inline(__always)
    func post(_ effects: ConnectionLifecycle.Effects, _ c: ConnectionRef) throws(URingError) {
        if effects.isSubset(of: Self.inlineEffects) {
            if effects.contains(.send) { try postSend(c) }
            if effects.contains(.close) { try postClose(c) }
            return
        }
        try postAll(effects, c)
    }

    /// The effects ``post(_:_:)`` handles inline (a receive is the receive path's to post); a
    /// constant: an array literal here would allocate on every call in a debug build.
    static let inlineEffects: ConnectionLifecycle.Effects = [.send, .close, .receive]

    /// A socket option ahead of the request that needs it: the chain goes on if it fails, and it
    /// completes only if it does. A constant: an array literal allocates on every use in a debug build.
    static let optionRequest: SubmissionOptions = [.hardLink, .skipSuccess]

    /// What an outbound socket made straight into a slot needs.
    static let directSocketFeatures: KernelFeatures = [.directSocket, .socketCommands]

    /// Closes `c`'s socket or slot: quietly (no completion on success) where the kernel allows;
    /// with a reset (`SO_LINGER` 0 first) after an abort or stalled output.
    @inline(__always)
    func postClose(_ c: ConnectionRef) throws(URingError) {
        // A close linked behind a socket option runs when that completes, later than the submit:
        // it must not be taken as done (and its slot handed out again) before its own completion.
        let linked = c.pointee.lifecycle.flags.contains(.resetOnClose) ? try prepareReset(c) : false
        let quiet = quietClose && !linked
        try ring.prepareClose(c.pointee.session.file, tag: c.pointee.tag(.close), options: quiet ? .skipSuccess : [])
        if quiet {
            closedIndices[closedCount] = Int32(c.pointee.session.index)
            closedCount += 1
        }
    }

    /// `SO_LINGER` 0 before `c`'s close, so the peer gets a reset: with setsockopt(2) on a
    /// descriptor, by the ring on a slot (hard-linked to the close, which goes on if it fails). A
    /// slot on a kernel without socket commands closes with a FIN.
    /// - Returns: whether a request was linked before the close.
    @inline(never)
    func prepareReset(_ c: ConnectionRef) throws(URingError) -> Bool {
        let file = c.pointee.session.file
        if !file.isFixed {
            try? Sockets.setResetOnClose(file.raw)
            return false
        }
        guard features.contains(.socketCommands) else { return false }
        try ring.reserveSubmissions(2)
        try ring.prepareSetSocketOption(
            file, .resetOnClose, tag: ControlTag.socketOption.rawValue, options: Self.optionRequest)
        return true
    }

    /// A socket option the ring set failed (``ControlTag/socketOption``): a kernel without socket
    /// commands (before 6.7) gives them up; anything else is logged.
    func onSocketOptionFailed(_ errno: Errno) {
        if errno == .notSupported || errno == .invalidArgument {
            fallBack(
                from: .socketCommands,
                "the kernel refuses socket options set by the ring (\(errno)): outbound sockets are plain descriptors from now on, and aborts of connections in slots end with a FIN")
        } else {
            logger.debug("a socket option set by the ring failed: \(errno)")
        }
    }

    /// ``post(_:_:)`` for effects beyond a send and a close: out of line, so the hot path stays small enough
    /// to inline (with the connect and shutdown effects it no longer was, 101 instructions per
    /// echoed message in a call of its own).
    @inline(never)
    func postAll(_ effects: ConnectionLifecycle.Effects, _ c: ConnectionRef) throws(URingError) {
        if effects.contains(.cancelReceive) { try ring.prepareCancel(c.pointee.tag(.recv), tag: c.pointee.tag(.cancelRecv)) }
        if effects.contains(.cancelSend) { try ring.prepareCancel(c.pointee.tag(.send), tag: c.pointee.tag(.cancelSend)) }
        if effects.contains(.cancelConnect) {
            try ring.prepareCancel(c.pointee.tag(.connect), tag: c.pointee.tag(.cancelConnect))
        }
        if effects.contains(.send) { try postSend(c) }
        if effects.contains(.shutdown) { try ring.prepareShutdown(c.pointee.session.file, how: Int32(SHUT_WR), tag: c.pointee.tag(.shutdown)) }
        if effects.contains(.close) { try postClose(c) }
        if effects.contains(.pausedAtBound) { stats.receivePauses &+= 1 }
    }
    override func fillDriverStatistics(_ snapshot: inout ServerStatistics) {
        if let slotStatistics = slots?.statistics { snapshot.slots = slotStatistics }
        snapshot.completions = ring.statistics.completions
        snapshot.submits = ring.statistics.submitCalls
        snapshot.completionQueueOverflows = UInt64(ring.completionQueueOverflow) + ring.statistics.overflowedHarvests
    }

    /// Wakes ring `target` for its mail from this ring, with `MSG_RING` where the kernel has it.
    /// - Returns: whether through `MSG_RING` (false: the eventfd).
    @discardableResult
    override func notify(_ target: Int) -> Bool {
        let fd = mailboxes.ports[target].descriptor.load(ordering: .acquiring)
        if features.contains(.messageRing) && fd >= 0 {
            do throws(URingError) {
                try ring.prepareMessage(
                    toRing: fd, result: Int32(ringIndex), targetTag: ControlTag.mail(from: ringIndex).rawValue,
                    tag: ControlTag.mailSent(to: target).rawValue)
                return true
            } catch {
                // No SQE: fall through to the eventfd.
            }
        }
        mailboxes.ports[target].wake.signal()
        return false
    }

}
