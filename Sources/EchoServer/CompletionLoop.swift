import Glibc
import Logging

/// Per-connection loop state that the generic ``Session`` does not carry: the send queue of
/// provided buffers, the receive pause, and the buffer-wait list links.
struct ConnectionState {
    var recvTag: UInt64 = 0
    var queueHead: Int32 = -1
    var queueTail: Int32 = -1
    var queuedBytes: Int = 0
    var headSent: Int32 = 0
    var pausedForBound = false
    var closeIssued = false
    var waiting = false
    // Kept across connections that reuse the index: the node may still be linked in the wait list.
    var linked = false
    var nextWaiting: Int32 = -1
}

/// The `GetQueuedCompletionStatus` loop: one ring, one thread, one handler.
///
/// Each turn submits what was prepared, waits for at least one completion, then dispatches every
/// ready completion through its tag: the context slab says which request it was and which session
/// it belongs to; a completion whose context was recycled is counted as stale and dropped.
///
/// Generic over its handler so the handler's calls specialise: no existential, no closure per
/// request. Everything here is confined to the loop's thread.
final class CompletionLoop<Handler: ConnectionHandler> {
    let configuration: ServerConfiguration
    let ring: Ring
    var contexts: ContextSlab
    var sessions: SessionPool
    var slots: SlotPool?
    var buffers: BufferRing?
    var handler: Handler
    let listener: Int32
    let wakeFD: Int32
    let logger: Logger
    let publish: (ServerStatistics, Bool) -> Void

    let connections: UnsafeMutablePointer<ConnectionState>
    let bufferLength: UnsafeMutablePointer<Int32>
    let bufferNext: UnsafeMutablePointer<Int32>
    let wakeBuffer: UnsafeMutableRawBufferPointer
    var freeBuffers = 0
    var waitHead: Int32 = -1
    var waitTail: Int32 = -1

    let useSlots: Bool
    let useRing: Bool
    var multishotAccept: Bool
    let idleNanoseconds: UInt64
    let maxPending: Int

    var acceptsInFlight = 0
    let acceptDepth: Int
    var acceptPaused = false
    var pauseEpisodeOpen = false
    var tickInFlight = false
    var tickTag: UInt64 = 0
    var stopping = false
    var stopDeadline: UInt64 = 0
    var now: UInt64 = 0
    var stats = ServerStatistics()
    var features: KernelFeatures

    init(
        configuration: ServerConfiguration, handler: Handler, listener: Int32, wakeFD: Int32, logger: Logger,
        publish: @escaping (ServerStatistics, Bool) -> Void
    ) throws(URingError) {
        self.configuration = configuration
        self.listener = listener
        self.wakeFD = wakeFD
        self.logger = logger
        self.publish = publish
        // Probe at start: drop what the running kernel cannot do before trying it.
        let release = Sockets.kernelRelease
        var features = configuration.features.intersection(KernelFeatures.supported(byKernelRelease: release))
        if features != configuration.features {
            logger.notice("kernel \(release) lacks \(configuration.features.subtracting(features)); using the fallbacks")
        }
        var chain = RingOptions.automaticFlags
        if !features.contains(.deferTaskrun) { chain.removeAll { $0.contains(.deferTaskrun) } }
        ring = try Ring(RingOptions(entries: configuration.ringEntries, flagPreference: chain))
        if !ring.setupFlags.contains(.deferTaskrun) { features.remove(.deferTaskrun) }
        let capacity = configuration.connectionsPerThread

        // Fixed slots: pooled mode only. The table has spare slots beyond the connection cap so a
        // client over the cap can still be accepted and closed cleanly.
        var slots: SlotPool? = nil
        if configuration.mode == .pooled && features.contains(.fixedFiles) {
            do {
                slots = try SlotPool(ring: ring, capacity: UInt32(capacity + configuration.spareSlots), policy: .backpressure)
            } catch {
                logger.warning("fixed files unavailable (\(error)); pooled mode falls back to plain descriptors")
                features.remove(.fixedFiles)
            }
        } else {
            features.remove(.fixedFiles)
        }
        useSlots = slots != nil
        self.slots = slots

        var buffers: BufferRing? = nil
        if configuration.receive == .bufferRing && features.contains(.bufferRing) {
            do {
                buffers = try BufferRing(
                    registeringWith: ring, group: 1, count: configuration.bufferRingEntries,
                    bufferSize: configuration.bufferSize)
            } catch {
                logger.warning("buffer ring unavailable (\(error)); falling back to per-session buffers")
                features.remove(.bufferRing)
            }
        } else {
            features.remove(.bufferRing)
        }
        useRing = buffers != nil
        self.buffers = buffers
        freeBuffers = useRing ? configuration.bufferRingEntries : 0
        // Slots are filled by pre-posted single-shot accepts (see armAccept); multishot accept
        // serves plain descriptors.
        if useSlots { features.remove(.multishotAccept) }
        multishotAccept = features.contains(.multishotAccept)
        acceptDepth = useSlots ? max(1, min(configuration.acceptDepth, capacity)) : 1
        self.features = features

        sessions = SessionPool(
            mode: configuration.mode, capacity: capacity, bufferSize: useRing ? 0 : configuration.bufferSize)
        contexts = ContextSlab(capacity: capacity * 4 + 128)
        connections = .allocate(capacity: capacity)
        connections.initialize(repeating: ConnectionState(), count: capacity)
        let ringEntries = useRing ? configuration.bufferRingEntries : 1
        bufferLength = .allocate(capacity: ringEntries)
        bufferLength.initialize(repeating: 0, count: ringEntries)
        bufferNext = .allocate(capacity: ringEntries)
        bufferNext.initialize(repeating: -1, count: ringEntries)
        wakeBuffer = .allocate(byteCount: 8, alignment: 8)
        idleNanoseconds = configuration.idleTimeout.map { UInt64($0.nanoseconds) } ?? 0
        maxPending = configuration.maxPendingBytesPerConnection
        self.handler = handler
        self.handler.start(capacity: capacity)
        stats.setupFlags = ring.setupFlags
        stats.features = features
    }

    deinit {
        connections.deallocate()
        bufferLength.deallocate()
        bufferNext.deallocate()
        wakeBuffer.deallocate()
    }

    // MARK: The loop

    func run() throws(URingError) {
        now = monotonicNanoseconds()
        try armWake()
        try armTick()
        try armAccept()
        while true {
            if stopping {
                if contexts.statistics.inUse == 0 { break }
                if now > stopDeadline {
                    logger.warning("stop timeout: closing \(sessions.statistics.inUse) connections with the ring")
                    break
                }
            }
            try ring.submitAndWait(1)
            now = monotonicNanoseconds()
            try ring.forEachCompletion { (completion: Completion) throws(URingError) in try dispatch(completion) }
            try afterBatch()
            // A fresh value for Server.statistics after every turn (a lock and a copy; metrics are
            // only reported on housekeeping ticks).
            publishStatistics(report: false)
        }
        teardown()
    }

    func dispatch(_ c: Completion) throws(URingError) {
        let tag = RequestTag(rawValue: c.tag)
        guard let ctx = contexts.resolve(tag) else {
            stats.staleCompletions &+= 1
            // A buffer taken by a request nobody owns any more goes straight back to the ring.
            if let id = c.bufferID { recycle(id) }
            return
        }
        switch tag.kind {
        case .recv: try onReceive(c, tag, ctx)
        case .send: try onSend(c, tag, ctx)
        case .accept: try onAccept(c, tag, ctx)
        case .close: try onClose(c, tag, ctx)
        case .cancel: try onCancel(c, tag, ctx)
        case .timeout: try onTick(c, tag)
        case .wake: try onWake(c, tag)
        default:
            contexts.release(tag)
        }
    }

    func afterBatch() throws(URingError) {
        guard useRing else { return }
        buffers?.commit()
        // Sessions that ran out of provided buffers receive again once some are back.
        while freeBuffers > 0 && waitHead >= 0 {
            let index = waitHead
            let conn = connections + Int(index)
            waitHead = conn.pointee.nextWaiting
            if waitHead < 0 { waitTail = -1 }
            conn.pointee.linked = false
            conn.pointee.nextWaiting = -1
            guard conn.pointee.waiting else { continue }
            conn.pointee.waiting = false
            if let s = sessions.session(at: Int(index)), s.pointee.state == .open, !s.pointee.receiving,
                !conn.pointee.pausedForBound
            {
                stats.receiveRearms &+= 1
                try startReceive(s)
            }
        }
    }

    // MARK: Accept

    /// Keeps accepts posted. Slots: up to `acceptDepth` single-shot accepts, each into a slot the
    /// pool chose (the `AcceptEx`-with-a-pre-made-socket pattern), and never one without a free
    /// slot: a direct accept that finds the table full has already taken the connection off the
    /// backlog and the kernel drops it. Descriptors: one multishot (or single-shot) accept.
    func armAccept() throws(URingError) {
        guard !stopping else { return }
        if useSlots {
            while acceptsInFlight < acceptDepth {
                guard let lease = slots?.acquire() ?? nil else {
                    if acceptsInFlight == 0 { pauseAccept("every fixed-file slot is in use") }
                    return
                }
                guard let tag = contexts.acquire(.accept) else {
                    slots?.release(lease)
                    if acceptsInFlight == 0 { pauseAccept("request contexts exhausted") }
                    return
                }
                contexts.context(tag).pointee.user = UInt64(lease.index) << 32 | UInt64(lease.generation)
                try ring.prepareAccept(.fd(listener), into: .slot(lease.index), tag: tag.rawValue)
                acceptsInFlight += 1
                acceptPaused = false
            }
            return
        }
        guard acceptsInFlight == 0 else { return }
        guard let tag = contexts.acquire(.accept) else {
            pauseAccept("request contexts exhausted")
            return
        }
        contexts.context(tag).pointee.user = .max
        try ring.prepareAccept(.fd(listener), multishot: multishotAccept, tag: tag.rawValue)
        acceptsInFlight = 1
        acceptPaused = false
    }

    func pauseAccept(_ reason: String) {
        acceptPaused = true
        if !pauseEpisodeOpen {
            pauseEpisodeOpen = true
            stats.acceptPauses &+= 1
            logger.warning("accepting paused: \(reason); resuming when a connection closes")
        }
    }

    func resumeAcceptIfPaused() throws(URingError) {
        guard !stopping else { return }
        if acceptPaused {
            stats.acceptRearms &+= 1
            try armAccept()
        } else if useSlots && acceptsInFlight < acceptDepth {
            try armAccept()
        }
    }

    func onAccept(_ c: Completion, _ tag: RequestTag, _ ctx: UnsafeMutablePointer<RequestContext>) throws(URingError) {
        let user = ctx.pointee.user
        let lease: SlotLease? =
            user == .max ? nil : SlotLease(index: UInt32(user >> 32), generation: UInt32(truncatingIfNeeded: user))
        let multishot = lease == nil && multishotAccept
        let ended = !multishot || !c.hasMore
        if ended {
            acceptsInFlight -= 1
            contexts.release(tag)
        }
        if c.result < 0 {
            if let lease { slots?.release(lease) }
            let errno = c.error!
            switch errno {
            case .processFileTableFull, .systemFileTableFull, .noMemory, .noBufferSpace:
                pauseAccept("accept failed with \(errno.name)")
            case .canceled:
                break
            case .invalidArgument where multishot && !stopping:
                logger.warning("multishot accept refused (EINVAL); falling back to single-shot accepts")
                multishotAccept = false
                features.remove(.multishotAccept)
                stats.features = features
            default:
                stats.errors &+= 1
                logger.error("accept failed: \(errno)")
            }
            if ended && !acceptPaused && !stopping {
                stats.acceptRearms &+= 1
                try armAccept()
            }
            return
        }
        pauseEpisodeOpen = false
        stats.accepted &+= 1
        let file: FileRef = lease.map { $0.file } ?? .fd(c.result)
        if stopping {
            try closeUnowned(file, lease)
        } else if let handle = sessions.acquire(file: file, slotGeneration: lease?.generation ?? 0),
            let s = sessions.resolve(handle)
        {
            let conn = connections + Int(handle.index)
            let linked = conn.pointee.linked
            let next = conn.pointee.nextWaiting
            conn.pointee = ConnectionState()
            conn.pointee.linked = linked
            conn.pointee.nextWaiting = next
            s.pointee.lastActivity = now
            handler.opened(ConnectionID(index: Int(handle.index), generation: handle.generation))
            try startReceive(s)
        } else {
            stats.rejected &+= 1
            try closeUnowned(file, lease)
        }
        if ended && !stopping {
            if multishot { stats.acceptRearms &+= 1 }
            try armAccept()
        }
    }

    /// Closes a socket that never got a session (connection cap reached, or stopping).
    func closeUnowned(_ file: FileRef, _ lease: SlotLease?) throws(URingError) {
        guard let tag = contexts.acquire(.close) else {
            // No context to track the close: close a plain fd synchronously; a slot is closed
            // when the table is unregistered. Never leak, never crash.
            if !file.isFixed { _ = try? Sockets.close(file.raw) }
            return
        }
        contexts.context(tag).pointee.user = lease.map { UInt64($0.index) << 32 | UInt64($0.generation) } ?? .max
        try ring.prepareClose(file, tag: tag.rawValue)
    }

    // MARK: Receive

    func startReceive(_ s: UnsafeMutablePointer<Session>) throws(URingError) {
        guard let tag = contexts.acquire(.recv, session: s.pointee.index, sessionGeneration: s.pointee.generation)
        else {
            try beginClose(s)
            return
        }
        if useRing {
            // Multishot while nothing waits to be sent; once bytes are queued (the peer reads slower
            // than it writes), one buffer per request, so a connection never holds much more than
            // its bound: a multishot recv may take many buffers before its completions are seen.
            let conn = connections + Int(s.pointee.index)
            try ring.prepareRecv(
                s.pointee.file, bufferGroup: 1, multishot: conn.pointee.queueHead < 0, tag: tag.rawValue)
            conn.pointee.recvTag = tag.rawValue
        } else {
            let room = UnsafeMutableRawBufferPointer(rebasing: s.pointee.buffer[0...])
            try ring.prepareRecv(s.pointee.file, into: room, tag: tag.rawValue)
        }
        s.pointee.receiving = true
        s.pointee.inFlight += 1
    }

    func onReceive(_ c: Completion, _ tag: RequestTag, _ ctx: UnsafeMutablePointer<RequestContext>) throws(URingError) {
        let handle = SessionHandle(index: ctx.pointee.session, generation: ctx.pointee.sessionGeneration)
        let final = !useRing || !c.hasMore
        if final { contexts.release(tag) }
        let bufferID = c.bufferID
        if bufferID != nil { freeBuffers -= 1 }
        guard let s = sessions.resolve(handle) else {
            stats.staleCompletions &+= 1
            if let bufferID { recycle(bufferID) }
            return
        }
        if final {
            s.pointee.receiving = false
            s.pointee.inFlight -= 1
        }
        let conn = connections + Int(handle.index)
        if c.result > 0 {
            let count = Int(c.result)
            stats.bytesIn &+= UInt64(count)
            s.pointee.bytesIn &+= UInt64(count)
            s.pointee.lastActivity = now
            guard s.pointee.state == .open else {
                // Bytes after we decided to close are dropped with the connection.
                if let bufferID { recycle(bufferID) }
                try finishCloseIfIdle(s)
                return
            }
            let id = ConnectionID(index: Int(handle.index), generation: handle.generation)
            if let bufferID {
                let bytes = UnsafeMutableRawBufferPointer(rebasing: ringBuffer(bufferID)[0..<count])
                let reply = handler.received(bytes, connection: id)
                let send = min(max(reply.count, 0), count)
                if send > 0 { enqueue(conn, bufferID, send) } else { recycle(bufferID) }
                if !s.pointee.sending && conn.pointee.queueHead >= 0 { try sendNext(s, conn) }
                if reply.close {
                    s.pointee.state = .halfClosed
                    if s.pointee.receiving { try cancelReceive(s, conn) }
                    if !s.pointee.sending { try beginClose(s) }
                    return
                }
                if conn.pointee.queuedBytes >= maxPending && s.pointee.receiving && !conn.pointee.pausedForBound {
                    // Bounded memory per connection: stop receiving until the peer reads.
                    conn.pointee.pausedForBound = true
                    stats.receivePauses &+= 1
                    try cancelReceive(s, conn)
                }
                if conn.pointee.queuedBytes >= maxPending && !s.pointee.receiving && !conn.pointee.pausedForBound {
                    conn.pointee.pausedForBound = true
                    stats.receivePauses &+= 1
                }
                if final && !conn.pointee.pausedForBound && !s.pointee.receiving {
                    stats.receiveRearms &+= 1
                    try startReceive(s)
                }
            } else {
                let bytes = UnsafeMutableRawBufferPointer(rebasing: s.pointee.buffer[0..<count])
                let reply = handler.received(bytes, connection: id)
                s.pointee.pendingStart = 0
                s.pointee.pendingEnd = min(max(reply.count, 0), count)
                if reply.close { s.pointee.state = .halfClosed }
                if s.pointee.pendingBytes > 0 {
                    try postSend(s)
                } else if s.pointee.state == .open {
                    try startReceive(s)
                } else {
                    try beginClose(s)
                }
            }
            return
        }
        if let bufferID { recycle(bufferID) }
        if c.result == 0 {
            // Peer half-closed: echo what is queued, then close.
            if s.pointee.state == .open { s.pointee.state = .halfClosed }
            if s.pointee.receiving { try cancelReceive(s, conn) }
            if !s.pointee.sending && s.pointee.pendingBytes == 0 && conn.pointee.queueHead < 0 {
                try beginClose(s)
            } else {
                try finishCloseIfIdle(s)
            }
            return
        }
        switch c.error! {
        case .noBufferSpace:
            // The buffer ring ran dry; the data (or the EOF) waits in the socket. Receive again as
            // soon as buffers come back.
            stats.bufferShortages &+= 1
            if s.pointee.state == .open && !conn.pointee.pausedForBound {
                if freeBuffers > 0 {
                    stats.receiveRearms &+= 1
                    try startReceive(s)
                } else {
                    addWaiting(Int32(handle.index))
                }
            } else {
                try finishCloseIfIdle(s)
            }
        case .canceled:
            if s.pointee.state == .halfClosed && !s.pointee.sending && conn.pointee.queueHead < 0 {
                try beginClose(s)
            } else {
                try finishCloseIfIdle(s)
            }
        default:
            // Reset or another error: nothing more will be read or written.
            stats.errors &+= 1
            try beginClose(s)
        }
    }

    func cancelReceive(_ s: UnsafeMutablePointer<Session>, _ conn: UnsafeMutablePointer<ConnectionState>)
        throws(URingError)
    {
        guard useRing, let tag = contexts.acquire(.cancel, session: s.pointee.index,
                                                  sessionGeneration: s.pointee.generation)
        else { return }
        s.pointee.inFlight += 1
        try ring.prepareCancel(conn.pointee.recvTag, tag: tag.rawValue)
    }

    // MARK: Send

    func enqueue(_ conn: UnsafeMutablePointer<ConnectionState>, _ id: UInt16, _ count: Int) {
        bufferLength[Int(id)] = Int32(count)
        bufferNext[Int(id)] = -1
        if conn.pointee.queueTail >= 0 {
            bufferNext[Int(conn.pointee.queueTail)] = Int32(id)
        } else {
            conn.pointee.queueHead = Int32(id)
            conn.pointee.headSent = 0
        }
        conn.pointee.queueTail = Int32(id)
        conn.pointee.queuedBytes += count
    }

    func sendNext(_ s: UnsafeMutablePointer<Session>, _ conn: UnsafeMutablePointer<ConnectionState>)
        throws(URingError)
    {
        let id = conn.pointee.queueHead
        guard id >= 0,
            let tag = contexts.acquire(.send, session: s.pointee.index, sessionGeneration: s.pointee.generation)
        else { return }
        let buffer = ringBuffer(UInt16(id))
        let bytes = UnsafeRawBufferPointer(
            rebasing: buffer[Int(conn.pointee.headSent)..<Int(bufferLength[Int(id)])])
        try ring.prepareSend(s.pointee.file, from: bytes, tag: tag.rawValue)
        s.pointee.sending = true
        s.pointee.inFlight += 1
    }

    func postSend(_ s: UnsafeMutablePointer<Session>) throws(URingError) {
        guard let tag = contexts.acquire(.send, session: s.pointee.index, sessionGeneration: s.pointee.generation)
        else {
            try beginClose(s)
            return
        }
        let bytes = UnsafeRawBufferPointer(rebasing: s.pointee.buffer[s.pointee.pendingStart..<s.pointee.pendingEnd])
        try ring.prepareSend(s.pointee.file, from: bytes, tag: tag.rawValue)
        s.pointee.sending = true
        s.pointee.inFlight += 1
    }

    func onSend(_ c: Completion, _ tag: RequestTag, _ ctx: UnsafeMutablePointer<RequestContext>) throws(URingError) {
        let handle = SessionHandle(index: ctx.pointee.session, generation: ctx.pointee.sessionGeneration)
        contexts.release(tag)
        guard let s = sessions.resolve(handle) else {
            stats.staleCompletions &+= 1
            return
        }
        s.pointee.sending = false
        s.pointee.inFlight -= 1
        if s.pointee.state == .closing {
            try finishCloseIfIdle(s)
            return
        }
        if c.result < 0 {
            stats.errors &+= 1
            try beginClose(s)
            return
        }
        let sent = Int(c.result)
        stats.bytesOut &+= UInt64(sent)
        s.pointee.bytesOut &+= UInt64(sent)
        let conn = connections + Int(handle.index)
        if useRing {
            let id = conn.pointee.queueHead
            conn.pointee.headSent += Int32(sent)
            conn.pointee.queuedBytes -= sent
            if conn.pointee.headSent < bufferLength[Int(id)] {
                try sendNext(s, conn)  // a short send continues where it stopped
                return
            }
            conn.pointee.queueHead = bufferNext[Int(id)]
            if conn.pointee.queueHead < 0 { conn.pointee.queueTail = -1 }
            conn.pointee.headSent = 0
            recycle(UInt16(id))
            if conn.pointee.queueHead >= 0 {
                try sendNext(s, conn)
            } else if s.pointee.state == .halfClosed {
                if !s.pointee.receiving { try beginClose(s) }
                return
            }
            if conn.pointee.pausedForBound && conn.pointee.queuedBytes <= maxPending / 2 && s.pointee.state == .open {
                conn.pointee.pausedForBound = false
                if !s.pointee.receiving {
                    stats.receiveRearms &+= 1
                    try startReceive(s)
                }
            }
        } else {
            s.pointee.pendingStart += sent
            if s.pointee.pendingBytes > 0 {
                try postSend(s)  // a short send continues where it stopped
            } else if s.pointee.state == .open {
                try startReceive(s)
            } else {
                try beginClose(s)
            }
        }
    }

    // MARK: Close

    /// Starts closing: cancel whatever is in flight, and close once nothing is (a close with a
    /// recv pending would leave the socket open and the recv swallowing the peer's bytes).
    func beginClose(_ s: UnsafeMutablePointer<Session>) throws(URingError) {
        if s.pointee.state == .closing { return }
        s.pointee.state = .closing
        let conn = connections + Int(s.pointee.index)
        conn.pointee.waiting = false
        if s.pointee.inFlight == 0 {
            try postClose(s, conn)
        } else if !s.pointee.cancelIssued {
            guard let tag = contexts.acquire(.cancel, session: s.pointee.index, sessionGeneration: s.pointee.generation)
            else { return }
            s.pointee.cancelIssued = true
            s.pointee.inFlight += 1
            try ring.prepareCancel(file: s.pointee.file, tag: tag.rawValue)
        }
    }

    func finishCloseIfIdle(_ s: UnsafeMutablePointer<Session>) throws(URingError) {
        guard s.pointee.state == .closing, s.pointee.inFlight == 0 else { return }
        let conn = connections + Int(s.pointee.index)
        if !conn.pointee.closeIssued { try postClose(s, conn) }
    }

    func postClose(_ s: UnsafeMutablePointer<Session>, _ conn: UnsafeMutablePointer<ConnectionState>)
        throws(URingError)
    {
        guard let tag = contexts.acquire(.close, session: s.pointee.index, sessionGeneration: s.pointee.generation)
        else { return }
        conn.pointee.closeIssued = true
        s.pointee.inFlight += 1
        try ring.prepareClose(s.pointee.file, tag: tag.rawValue)
    }

    func onCancel(_ c: Completion, _ tag: RequestTag, _ ctx: UnsafeMutablePointer<RequestContext>) throws(URingError) {
        let handle = SessionHandle(index: ctx.pointee.session, generation: ctx.pointee.sessionGeneration)
        contexts.release(tag)
        guard let s = sessions.resolve(handle) else { return }
        s.pointee.inFlight -= 1
        if s.pointee.state == .halfClosed && !s.pointee.receiving && !s.pointee.sending
            && connections[Int(handle.index)].queueHead < 0
        {
            try beginClose(s)
        } else {
            try finishCloseIfIdle(s)
        }
    }

    func onClose(_ c: Completion, _ tag: RequestTag, _ ctx: UnsafeMutablePointer<RequestContext>) throws(URingError) {
        let session = ctx.pointee.session
        let handle = SessionHandle(index: session, generation: ctx.pointee.sessionGeneration)
        let user = ctx.pointee.user
        contexts.release(tag)
        if c.result < 0 { logger.debug("close failed: \(c.error!)") }
        if session == .max {
            // A connection that never had a session.
            if user != .max {
                slots?.release(SlotLease(index: UInt32(user >> 32), generation: UInt32(truncatingIfNeeded: user)))
            }
            try resumeAcceptIfPaused()
            return
        }
        guard let s = sessions.resolve(handle) else { return }
        s.pointee.inFlight -= 1
        let conn = connections + Int(handle.index)
        // Buffers still queued for sending go back to the ring.
        var id = conn.pointee.queueHead
        while id >= 0 {
            let next = bufferNext[Int(id)]
            recycle(UInt16(id))
            id = next
        }
        conn.pointee.queueHead = -1
        conn.pointee.queueTail = -1
        conn.pointee.queuedBytes = 0
        conn.pointee.waiting = false
        handler.closed(ConnectionID(index: Int(handle.index), generation: handle.generation))
        if s.pointee.file.isFixed {
            slots?.release(SlotLease(index: UInt32(bitPattern: s.pointee.file.raw), generation: s.pointee.slotGeneration))
        }
        if !sessions.release(handle) {
            logger.critical("session \(handle) closed with \(s.pointee.inFlight) requests in flight")
        }
        stats.closed &+= 1
        try resumeAcceptIfPaused()
    }

    // MARK: Buffers

    func ringBuffer(_ id: UInt16) -> UnsafeMutableRawBufferPointer {
        buffers?.buffer(id) ?? UnsafeMutableRawBufferPointer(start: nil, count: 0)
    }

    func recycle(_ id: UInt16) {
        buffers?.recycle(id)
        freeBuffers += 1
    }

    func addWaiting(_ index: Int32) {
        let conn = connections + Int(index)
        conn.pointee.waiting = true
        guard !conn.pointee.linked else { return }
        conn.pointee.linked = true
        conn.pointee.nextWaiting = -1
        if waitTail >= 0 { connections[Int(waitTail)].nextWaiting = index } else { waitHead = index }
        waitTail = index
    }

    // MARK: Housekeeping and stop

    func armTick() throws(URingError) {
        guard let tag = contexts.acquire(.timeout) else { return }
        try ring.prepareTimeout(configuration.tickInterval, tag: tag.rawValue)
        tickInFlight = true
        tickTag = tag.rawValue
    }

    func onTick(_ c: Completion, _ tag: RequestTag) throws(URingError) {
        contexts.release(tag)
        tickInFlight = false
        if stopping { return }
        if idleNanoseconds > 0 {
            for i in 0..<sessions.capacity {
                guard let s = sessions.session(at: i), s.pointee.state == .open else { continue }
                if now &- s.pointee.lastActivity > idleNanoseconds {
                    stats.idleClosed &+= 1
                    try beginClose(s)
                }
            }
        }
        try resumeAcceptIfPaused()
        let snapshot = publishStatistics(report: true)
        logger.debug("statistics: \(snapshot)")
        try armTick()
    }

    func armWake() throws(URingError) {
        guard let tag = contexts.acquire(.wake) else { return }
        try ring.prepareRead(.fd(wakeFD), into: wakeBuffer, tag: tag.rawValue)
    }

    func onWake(_ c: Completion, _ tag: RequestTag) throws(URingError) {
        contexts.release(tag)
        if c.result < 0 && c.error == .interrupted {
            try armWake()
            return
        }
        // Stop: no new accepts, cancel the housekeeping timer, close every connection.
        stopping = true
        stopDeadline = now &+ UInt64(configuration.stopTimeout.nanoseconds)
        if acceptsInFlight > 0, let tag = contexts.acquire(.cancel) {
            try ring.prepareCancel(file: .fd(listener), tag: tag.rawValue)
        }
        if tickInFlight, let tag = contexts.acquire(.cancel) {
            try ring.prepareCancel(tickTag, tag: tag.rawValue)
        }
        for i in 0..<sessions.capacity {
            if let s = sessions.session(at: i) { try beginClose(s) }
        }
    }

    func teardown() {
        // Whatever is still open after the stop timeout: plain fds are closed here, slots when the
        // table is unregistered (and the ring exits).
        for i in 0..<sessions.capacity {
            if let s = sessions.session(at: i), !s.pointee.file.isFixed { _ = try? Sockets.close(s.pointee.file.raw) }
        }
        try? buffers?.unregister(from: ring)
        buffers = nil
        if useSlots { try? ring.unregisterFiles() }
        let final = publishStatistics()
        logger.info("ring stopped: \(final)")
    }

    @discardableResult
    func publishStatistics(report: Bool = true) -> ServerStatistics {
        var snapshot = stats
        snapshot.active = sessions.statistics.inUse
        snapshot.sessions = sessions.statistics
        snapshot.contexts = contexts.statistics
        if let slotStatistics = slots?.statistics { snapshot.slots = slotStatistics }
        snapshot.completions = ring.statistics.completions
        snapshot.submits = ring.statistics.submitCalls
        snapshot.completionQueueOverflows = UInt64(ring.completionQueueOverflow)
        snapshot.buffersHeld = useRing ? configuration.bufferRingEntries - freeBuffers : 0
        publish(snapshot, report)
        return snapshot
    }
}

@inline(__always)
func monotonicNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}

extension Duration {
    var nanoseconds: Int64 {
        let (s, atto) = components
        return s * 1_000_000_000 + atto / 1_000_000_000
    }
}
