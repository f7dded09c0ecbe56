import SocketPool
import URing

/// Keeps accepts posted, and pauses and resumes them.
///
/// Slots: up to `depth` single-shot accepts, each into a slot the pool chose (the
/// `AcceptEx`-with-a-pre-made-socket pattern), never one without a free slot: a direct accept that
/// finds the table full has already taken the connection off the backlog, and the kernel drops it.
/// With ``KernelFeatures/directMultishotAccept``, one multishot accept instead, into slots the
/// kernel chooses (`IORING_FILE_INDEX_ALLOC`): a submission per burst rather than per connection,
/// the pool told which slot each completion names (`SlotPool.claim`); the table has a backlog's
/// worth of spare slots so a burst at the connection cap still finds one.
/// Descriptors: one multishot (or single-shot) accept, re-armed whenever a completion lacks
/// `F_MORE`. On `EMFILE`/`ENFILE`/`ENOMEM`, or with no slot free, accepting pauses (one log line
/// per episode) and resumes when a connection closes or on the next tick.
struct Acceptor: ~Copyable {
    let listener: Int32
    /// Which of the server's listeners it accepts on: 0 for the main one. Its connections carry it
    /// (``ConnectionRecord/listener``).
    let number: UInt8
    let depth: Int
    var multishot: Bool
    /// Pooled: one multishot accept into kernel-chosen slots.
    var directMultishot: Bool
    var inFlight = 0
    var paused = false
    var episodeOpen = false
    /// A multishot accept has delivered a connection: a later `EINVAL` is not "unsupported".
    var multishotWorked = false
    /// The tags of the accepts in flight, so a stop cancels each by its `user_data` (Linux 5.5)
    /// rather than by the listener's fd (5.19).
    let tags: UnsafeMutablePointer<UInt64>

    /// - Parameters:
    ///   - listener: the listening socket.
    ///   - core: the loop's state.
    ///   - number: which of the server's listeners it is.
    ///   - maxDepth: the most accepts posted at once (with slots; one multishot accept otherwise).
    init(listener: Int32, core: URingCore, number: UInt8 = 0, maxDepth: Int = .max) {
        self.listener = listener
        self.number = number
        multishot = core.features.contains(.multishotAccept)
        directMultishot = core.useSlots && core.features.contains(.directMultishotAccept)
        depth =
            core.useSlots && !directMultishot
            ? max(1, min(core.configuration.acceptDepth, core.sessions.capacity, maxDepth)) : 1
        tags = .allocate(capacity: depth)
    }

    deinit { tags.deallocate() }

    /// Cancels every accept in flight (stop).
    func cancelAll(_ core: URingCore) throws(URingError) {
        for i in 0..<inFlight { try core.ring.prepareCancel(tags[i], tag: ControlTag.acceptsCancelled.rawValue) }
    }

    private mutating func posted(_ tag: RequestTag) {
        tags[inFlight] = tag.rawValue
        inFlight += 1
    }

    private mutating func ended(_ tag: RequestTag) {
        for i in 0..<inFlight where tags[i] == tag.rawValue {
            tags[i] = tags[inFlight - 1]
            inFlight -= 1
            return
        }
    }

    /// A socket an accept completion delivered: a slot and its lease, or a plain descriptor.
    struct Accepted {
        let file: FileRef
        let slot: Lease?
    }

    mutating func arm(_ core: URingCore) throws(URingError) {
        guard !core.stopping else { return }
        if core.useSlots && !directMultishot {
            while inFlight < depth {
                guard let lease = core.slots?.acquire() ?? nil else {
                    if inFlight == 0 { pause(core, "every fixed-file slot is in use") }
                    return
                }
                guard let tag = core.contexts.acquire(kind: RequestKind.accept.rawValue, .accept(listener: number, into: .slot(lease)))
                else {
                    core.slots?.release(lease)
                    if inFlight == 0 { pause(core, "request contexts exhausted") }
                    return
                }
                try core.ring.prepareAccept(.fd(listener), into: .slot(lease.index), tag: tag.rawValue)
                posted(tag)
                paused = false
            }
            return
        }
        // One request for many connections: a multishot accept into slots the kernel chooses, or
        // (plain descriptors) a multishot or single-shot accept.
        guard inFlight == 0 else { return }
        if directMultishot && (core.slots?.available ?? 0) == 0 { return pause(core, "every fixed-file slot is in use") }
        guard
            let tag = core.contexts.acquire(
                kind: RequestKind.accept.rawValue, .accept(listener: number, into: directMultishot ? .anySlot : .descriptor))
        else { return pause(core, "request contexts exhausted") }
        if directMultishot {
            try core.ring.prepareAccept(.fd(listener), into: .anySlot, multishot: true, tag: tag.rawValue)
        } else {
            try core.ring.prepareAccept(.fd(listener), multishot: multishot, tag: tag.rawValue)
        }
        posted(tag)
        paused = false
    }

    mutating func pause(_ core: URingCore, _ reason: String) {
        paused = true
        if !episodeOpen {
            episodeOpen = true
            core.stats.acceptPauses &+= 1
            core.logger.warning("accepting paused: \(reason); resuming when a connection closes")
        }
    }

    /// After a close or on a tick: post the accepts a pause or a full slot table held back.
    mutating func resumeIfPaused(_ core: URingCore) throws(URingError) {
        guard !core.stopping else { return }
        if paused {
            core.stats.acceptRearms &+= 1
            try arm(core)
        } else if core.useSlots && inFlight < depth {
            try arm(core)
        }
    }

    /// Handles an accept completion; returns the socket it delivered, if any. The caller makes it
    /// a connection (or closes it), then calls ``rearmIfEnded(_:_:)``.
    mutating func onAccept(_ c: Completion, _ tag: RequestTag, into: SharedRequest.AcceptInto, _ core: URingCore)
        throws(URingError) -> (Accepted?, ended: Bool)
    {
        var lease: Lease? = nil
        var direct = false
        switch into {
        case .slot(let chosen): lease = chosen
        case .anySlot: direct = true
        case .descriptor: break
        }
        let isMultishot = direct || (lease == nil && multishot)
        let ended = !isMultishot || !c.hasMore
        if ended {
            self.ended(tag)
            core.contexts.release(tag)
        }
        guard c.result >= 0 else {
            if let lease { core.slots?.release(lease) }
            let errno = c.error!
            switch errno {
            case .processFileTableFull, .systemFileTableFull, .noMemory, .noBufferSpace:
                pause(core, "accept failed with \(errno.name)")
            case .canceled, .connectionAborted:
                break  // a stop, or a client that reset before it was accepted: accept again
            case .invalidArgument where direct && !multishotWorked && !core.stopping:
                directMultishot = false
                core.fallBack(from: .directMultishotAccept, "multishot accept into kernel-chosen slots refused (EINVAL); falling back to single-shot slot accepts")
            case .invalidArgument where isMultishot && !multishotWorked && !core.stopping:
                multishot = false
                core.fallBack(from: .multishotAccept, "multishot accept refused (EINVAL); falling back to single-shot accepts")
            default:
                // Anything else may well fail again at once (a listener shut down, say): back off
                // to the next tick or close rather than spin, count it, log once per episode.
                core.stats.acceptErrors &+= 1
                pause(core, "accept failed with \(errno)")
            }
            if ended && !paused && !core.stopping {
                core.stats.acceptRearms &+= 1
                try arm(core)
            }
            return (nil, false)
        }
        episodeOpen = false
        if isMultishot { multishotWorked = true }
        if direct {
            // The kernel chose the slot; the pool takes note. A slot the pool thinks is leased
            // cannot happen while the kernel alone allocates; if it did, the socket is closed.
            let index = UInt32(bitPattern: c.result)
            lease = core.slots?.claim(index)
            if lease == nil {
                core.logger.error("direct accept into slot \(index), which the pool holds as leased; closing it")
                try Self.closeRejected(Accepted(file: .slot(index), slot: nil), core)
                return (nil, ended)
            }
        }
        if number == 0 { core.stats.accepted &+= 1 } else { core.stats.endpointConnections &+= 1 }
        return (Accepted(file: lease.map { .slot($0.index) } ?? .fd(c.result), slot: lease), ended)
    }

    mutating func rearmIfEnded(_ ended: Bool, _ core: URingCore) throws(URingError) {
        guard ended && !core.stopping else { return }
        if multishot && !core.useSlots { core.stats.acceptRearms &+= 1 }
        try arm(core)
    }

    /// Closes a socket that never became a connection (connection cap reached, or stopping).
    static func closeRejected(_ accepted: Accepted, _ core: URingCore) throws(URingError) {
        guard let tag = core.contexts.acquire(kind: RequestKind.closeRejected.rawValue, .closeRejected(slot: accepted.slot))
        else {
            // No context to track the close: close a plain fd synchronously; a slot is closed when
            // the table is unregistered. Never leak, never crash.
            if !accepted.file.isFixed { _ = try? Sockets.close(accepted.file.raw) }
            return
        }
        try core.ring.prepareClose(accepted.file, tag: tag.rawValue)
    }

    /// The close of a rejected socket completed: its slot goes back.
    static func onRejectedClosed(_ tag: RequestTag, slot: Lease?, _ core: URingCore) {
        core.contexts.release(tag)
        if let slot { core.slots?.release(slot) }
    }
}
