import Logging
import SocketPool
import URing

/// What one ring's loop owns, apart from its handler and its receive strategy: the ring, the
/// connections (one ``Session`` record each), the send queues, the shared request contexts
/// (accept, timer, wake, messages) and the counters. Handles (``Connection``, ``RingContext``)
/// reach it during callbacks.
///
/// Not generic, so the handle types are not either; the generic ``CompletionLoop`` does the
/// dispatching and calls the handler. Confined to the ring's thread.
final class LoopCore {
    let configuration: ServerConfiguration
    let ring: Ring
    let ringIndex: Int
    let mailboxes: Mailboxes
    let logger: Logger
    @exclusivity(unchecked) var contexts: ContextSlab
    @exclusivity(unchecked) var sessions: SessionPool
    @exclusivity(unchecked) var slots: SlotPool?
    @exclusivity(unchecked) var queue: SendQueue
    @exclusivity(unchecked) var stats = ServerStatistics()
    /// The sessions of the secondary listener's (the metrics endpoint's) connections open now, and
    /// the bytes its closed ones moved: kept out of `active`, `bytesIn` and `bytesOut` when
    /// statistics are published, so the hot path never asks which listener a connection came from.
    @exclusivity(unchecked) var endpointSessions: [UInt32] = []
    @exclusivity(unchecked) var endpointClosedBytesIn: UInt64 = 0
    @exclusivity(unchecked) var endpointClosedBytesOut: UInt64 = 0
    @exclusivity(unchecked) var features: KernelFeatures
    @exclusivity(unchecked) var now: UInt64 = 0
    @exclusivity(unchecked) var stopping = false

    /// Receiving pauses at this many queued bytes and resumes at half.
    let maxPending: Int
    /// A write that would queue more than this is refused.
    let maxOutput: Int
    /// ``ConnectionHandler/writable(_:)`` is called once a waiting queue drains to this.
    let lowWater: Int
    /// Receiving pauses while a connection's queue holds this many outbound buffers.
    let maxOutboundHeld: Int32
    /// The ring's share of the connection cap; sessions beyond it are the metrics endpoint's.
    let mainCapacity: Int
    /// Outbound buffers one connection's writes may take.
    let maxOutboundPerConnection: Int

    /// Connections written to (or closed) during a callback, flushed when the callback returns.
    let dirtyNext: UnsafeMutablePointer<Int32>
    let isDirty: UnsafeMutablePointer<Bool>
    @exclusivity(unchecked) var dirtyHead: Int32 = -1
    /// While the handler's `received` runs: the connection and the queue tail before the call, so
    /// the in-place reply goes in ahead of what the call writes.
    @exclusivity(unchecked) var replyAnchorSession: Int32 = -1
    @exclusivity(unchecked) var replyAnchor: Int32 = -1

    init(
        configuration: ServerConfiguration, setup: consuming RingSetup, provided: ProvidedSegments,
        ringIndex: Int, mailboxes: Mailboxes, logger: Logger
    ) {
        self.configuration = configuration
        self.ringIndex = ringIndex
        self.mailboxes = mailboxes
        self.logger = logger
        let capacity = setup.capacity
        mainCapacity = setup.mainCapacity
        let useRing: Bool
        if case .none = provided { useRing = false } else { useRing = true }
        features = setup.features
        slots = setup.slots.take()
        ring = setup.ring
        sessions = SessionPool(
            mode: configuration.mode, capacity: capacity, bufferSize: useRing ? 0 : configuration.bufferSize)
        // Accepts, and the closes of sockets over the cap (at most one per spare slot in flight).
        contexts = ContextSlab(capacity: configuration.acceptDepth + setup.spareSlots + (capacity - mainCapacity) + 64)
        queue = SendQueue(
            provided: provided, outbound: configuration.outboundBuffers, outboundSize: configuration.bufferSize,
            sessions: useRing ? 0 : capacity, capacity: capacity)
        dirtyNext = .allocate(capacity: capacity)
        dirtyNext.initialize(repeating: -1, count: capacity)
        isDirty = .allocate(capacity: capacity)
        isDirty.initialize(repeating: false, count: capacity)
        maxPending = configuration.maxPendingBytesPerConnection
        maxOutput = configuration.maxOutputBytesPerConnection
        lowWater = configuration.maxPendingBytesPerConnection / 2
        maxOutboundHeld = Int32(max(2, configuration.maxPendingBytesPerConnection / configuration.bufferSize))
        // The byte bound in buffers, plus two for a partly sent head and a partly filled tail: full
        // buffers meet the byte bound first; only many small, uncoalesced writes meet this one.
        maxOutboundPerConnection = (configuration.maxOutputBytesPerConnection + configuration.bufferSize - 1)
            / configuration.bufferSize + 2
        stats.setupFlags = ring.setupFlags
        stats.features = features
    }

    deinit {
        dirtyNext.deallocate()
        isDirty.deallocate()
    }

    var useSlots: Bool { slots != nil }

    /// Whether a connection of `listener` fits: the main listener's within the ring's share of
    /// the cap, the metrics endpoint's within the sessions reserved for it.
    @inline(__always)
    func admits(_ listener: UInt8) -> Bool {
        listener == 0
            ? sessions.statistics.inUse - endpointSessions.count < mainCapacity
            : endpointSessions.count < sessions.capacity - mainCapacity
    }

    /// The live session an ID names, or nil for a stale ID.
    @inline(__always)
    func session(_ id: ConnectionID) -> UnsafeMutablePointer<Session>? {
        guard id.ring == ringIndex && id.index >= 0 && id.index < sessions.capacity,
            let s = sessions.session(at: id.index), s.pointee.epoch == id.generation
        else { return nil }
        return s
    }

    @inline(__always)
    func connectionID(_ s: UnsafeMutablePointer<Session>) -> ConnectionID {
        ConnectionID(ring: ringIndex, index: Int(s.pointee.index), generation: s.pointee.epoch)
    }

    // MARK: Requests from handles

    func write(_ bytes: UnsafeRawBufferPointer, to id: ConnectionID) -> WriteResult {
        guard let s = session(id), s.pointee.state == .open || s.pointee.state == .halfClosed,
            !s.pointee.abortRequested
        else { return .closed }
        guard s.pointee.queuedBytes + bytes.count <= maxOutput else {
            // A write larger than the bound itself can never fit: no writable for it.
            if bytes.count <= maxOutput { s.pointee.wantsWritable = true }
            stats.writesRefused &+= 1
            return .full
        }
        // Writes made during `received` go after its in-place reply, so they must not fill the room
        // left in the segment that was last before the call.
        let coalesce = !(Int32(bitPattern: s.pointee.index) == replyAnchorSession && s.pointee.queueTail == replyAnchor)
        guard queue.write(bytes, to: s, coalesce: coalesce, maxHeld: maxOutboundPerConnection) else {
            s.pointee.wantsWritable = true
            stats.writesRefused &+= 1
            return .full
        }
        if s.pointee.queuedBytes >= maxPending { s.pointee.wantsWritable = true }
        markDirty(s)
        return .queued
    }

    func requestWritable(_ id: ConnectionID) {
        guard let s = session(id), s.pointee.state == .open || s.pointee.state == .halfClosed,
            !s.pointee.abortRequested
        else { return }
        s.pointee.wantsWritable = true
    }

    func requestClose(_ id: ConnectionID, abort: Bool) {
        guard let s = session(id), s.pointee.state != .closing else { return }
        if abort { s.pointee.abortRequested = true } else { s.pointee.closeRequested = true }
        markDirty(s)
    }

    func queuedBytes(_ id: ConnectionID) -> Int? { session(id)?.pointee.queuedBytes }

    func pauseReceiving(_ id: ConnectionID, _ paused: Bool) {
        guard let s = session(id), s.pointee.pausedByHandler != paused else { return }
        s.pointee.pausedByHandler = paused
        markDirty(s)
    }

    /// The next connection written to (or closed, paused, resumed) during a callback, or nil.
    @inline(__always)
    func popDirty() -> UnsafeMutablePointer<Session>? {
        while dirtyHead >= 0 {
            let i = Int(dirtyHead)
            dirtyHead = dirtyNext[i]
            isDirty[i] = false
            if let s = sessions.session(at: i) { return s }
        }
        return nil
    }

    @inline(__always)
    func markDirty(_ s: UnsafeMutablePointer<Session>) {
        let i = Int(s.pointee.index)
        guard !isDirty[i] else { return }
        isDirty[i] = true
        dirtyNext[i] = dirtyHead
        dirtyHead = Int32(i)
    }

    /// Acts on a session's requests and queue: abort, close-after-output, and a send when output
    /// waits and none is in flight.
    func settle(_ s: UnsafeMutablePointer<Session>) throws(URingError) {
        if s.pointee.abortRequested {
            try beginClose(s)
            return
        }
        if s.pointee.closeRequested && s.pointee.state == .open { try stopReceiving(s) }
        if s.pointee.state == .closing { return try finishCloseIfIdle(s) }
        if !s.pointee.pending.contains(.send) && s.pointee.queueHead >= 0 {
            try postSend(s)
        } else {
            try closeIfDone(s)
        }
    }

    /// Whether `s` should have a receive posted (the strategy decides whether it can).
    @inline(__always)
    func wantsReceive(_ s: UnsafeMutablePointer<Session>) -> Bool {
        s.pointee.state == .open && !s.pointee.pausedForBound && !s.pointee.pausedByHandler
            && !s.pointee.waitingForBuffers
            && !s.pointee.pending.contains(.recv) && !s.pointee.pending.contains(.cancelRecv)
    }

    // MARK: Send

    /// Posts the send of what `s` has queued: one `send` for one segment (the echo path), one
    /// gathering `sendmsg` for several, so a connection that has fallen behind catches up in
    /// few requests.
    @inline(__always)
    func postSend(_ s: UnsafeMutablePointer<Session>) throws(URingError) {
        if queue.hasSeveral(s) {
            try ring.prepareSendMessage(s.pointee.file, queue.gather(s), tag: s.pointee.tag(.send).rawValue)
        } else {
            guard let bytes = queue.head(s) else { return }
            try ring.prepareSend(s.pointee.file, from: bytes, tag: s.pointee.tag(.send).rawValue)
        }
        s.pointee.pending.insert(.send)
        s.pointee.lastProgress = now
    }
}
