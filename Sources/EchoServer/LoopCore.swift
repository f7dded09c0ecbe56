import Glibc
import Synchronization
import Logging
import SocketPool
import URing

/// What one ring's loop owns whichever driver runs it, apart from its handler and its receive
/// path: the connections (one ``ConnectionRecord`` each), the send queues, the shared request
/// contexts, the inbox and the counters, and what handles ask of them (write, close, pause).
/// Handles (``Connection``, ``RingContext``) reach it during callbacks. Each driver's core is a
/// subclass (``URingCore``: the ring, its slots and what it posts; `EpollCore`: the epoll
/// instance, the receive pool, the ready list), which also opens outbound connections its own way
/// (``connect(to:timeout:)``).
///
/// Not generic, so the handle types are not either; the generic driver loop (``CompletionLoop``,
/// `EpollLoop`) does the dispatching and calls the handler. Confined to the ring's thread.
class LoopCore {
    final let configuration: ServerConfiguration
    final let ringIndex: Int
    final let mailboxes: Mailboxes
    final let logger: Logger
    @exclusivity(unchecked) final var contexts: ContextSlab<SharedRequest>
    @exclusivity(unchecked) final var sessions: SessionPool<ConnectionRecord>
    @exclusivity(unchecked) final var queue: SendQueue
    /// What other threads know and reserve of this ring's connections, and the inbox their
    /// writes, closes and aborts come through (``ConnectionHandle``). The methods the loop calls on
    /// it per connection are inlined: a call would retain it around itself (measured: once per
    /// accepted and per closed connection).
    final let remote: RemoteConnections
    @exclusivity(unchecked) final var stats = ServerStatistics()
    /// The sessions of the other listeners' connections open now, and the bytes their closed ones
    /// moved: kept out of `active`, `bytesIn` and `bytesOut` when statistics are published, so the
    /// hot path never asks which listener a connection came from.
    @exclusivity(unchecked) final var sideSessions: [UInt32] = []
    @exclusivity(unchecked) final var sideClosedBytesIn: UInt64 = 0
    @exclusivity(unchecked) final var sideClosedBytesOut: UInt64 = 0
    /// By listener number: the other listeners' connections open now, and the sessions each may
    /// take (its cap plus one).
    @exclusivity(unchecked) final var sideOpen: [Int]
    final let sideCapacity: [Int]
    /// Outbound connections open (or connecting) now, and how many may be.
    @exclusivity(unchecked) final var outboundOpen = 0
    final let outboundCapacity: Int
    /// The listener whose handler the loop is calling now (0: the main one, or none): set by the
    /// router around each other listener's callbacks, so a connect made there is that listener's.
    @exclusivity(unchecked) final var dispatchingListener: UInt8 = 0
    /// Which listener's handler opened each outbound connection, by session index: its callbacks
    /// (opened, connectFailed) go to that handler.
    @exclusivity(unchecked) final var outboundOrigin: [UInt8] = []
    @exclusivity(unchecked) final var features: KernelFeatures
    @exclusivity(unchecked) final var now: UInt64 = 0
    @exclusivity(unchecked) final var stopping = false

    /// Receiving pauses at this many queued bytes and resumes at half.
    final let maxPending: Int
    /// A write that would queue more than this is refused.
    final let maxOutput: Int
    /// The largest write that can ever be queued: the output bound, or what one connection can
    /// ever hold of the outbound buffers (its guarantee and half the shared pool) if that is less.
    /// A waiting writer asking for more would wait for good.
    final let largestWrite: Int
    /// ``ConnectionHandler/writable(_:)`` is called once a waiting queue drains to this.
    final let lowWater: Int
    /// Receiving pauses while a connection's queue holds this many outbound buffers.
    final let maxOutboundHeld: Int32
    /// The ring's share of the connection cap; sessions beyond it are the other listeners'.
    final let mainCapacity: Int
    /// Outbound buffers one connection's writes may take.
    final let maxOutboundPerConnection: Int

    /// Connections whose close is done (a quiet close submitted, a descriptor closed) during the
    /// current event: recycled once it has been handled, when nothing on the stack still holds
    /// their record.
    final let closedIndices: UnsafeMutablePointer<Int32>
    @exclusivity(unchecked) final var closedCount = 0

    /// Set by a handler during `received` to keep the received segment (``ConnectionRecord/inbound``)
    /// instead of replying in place: an async connection's bytes wait for their consumer.
    @exclusivity(unchecked) final var holdReceived = false
    /// Gives a received segment back to the receive path (set by the loop, which knows it).
    @exclusivity(unchecked) final var releaseReceived: (Int32, ConnectionRef) -> Void = { _, _ in }

    /// Connections a callback touched (wrote to, closed, paused), settled when it returns.
    final let touchedNext: UnsafeMutablePointer<Int32>
    final let isTouched: UnsafeMutablePointer<Bool>
    @exclusivity(unchecked) final var touchedHead: Int32 = -1
    /// While the handler's `received` runs: the connection and the queue tail before the call, so
    /// the in-place reply goes in ahead of what the call writes.
    @exclusivity(unchecked) final var replyAnchorSession: Int32 = -1
    @exclusivity(unchecked) final var replyAnchor: Int32 = -1

    /// Closes, aborts and shutdowns asked on this thread while their connection had inbox records
    /// pending, applied once it has none (after a drain), so they follow every write their caller
    /// pushed before (``requestClose(_:abort:)``): by session, the operations' bits and the
    /// connection's epoch, and the sessions that have any, in the order they were deferred.
    final let deferredOperations: UnsafeMutablePointer<UInt8>
    final let deferredEpochs: UnsafeMutablePointer<UInt64>
    final let deferredSessions: UnsafeMutablePointer<Int32>
    @exclusivity(unchecked) final var deferredCount = 0
    /// ``remote``'s per-session tables, as plain pointers: read on every open and close, they
    /// retain nothing (``RemoteTables``).
    final let tables: RemoteTables

    /// - Parameters:
    ///   - capacity: sessions (the ring's share of the cap, other listeners', outbound).
    ///   - mainCapacity: the ring's share of the connection cap.
    ///   - outboundCapacity: outbound connections the ring may have open.
    ///   - sharedContexts: shared request contexts beyond the accepts and the other listeners'.
    ///   - features: the kernel features the driver uses (none for a readiness driver).
    init(
        configuration: ServerConfiguration, capacity: Int, mainCapacity: Int, outboundCapacity: Int,
        sharedContexts: Int, features: KernelFeatures, provided: ProvidedSegments, ringIndex: Int,
        mailboxes: Mailboxes, logger: Logger, listeners: RingListeners
    ) throws(URingError) {
        let numbers = listeners.sides.map { Int($0.number) }
        var caps = Array(repeating: 0, count: (numbers.max() ?? 0) + 1)
        for side in listeners.sides { caps[Int(side.number)] = side.maxConnections + 1 }
        sideCapacity = caps
        sideOpen = Array(repeating: 0, count: caps.count)
        self.configuration = configuration
        self.ringIndex = ringIndex
        self.mailboxes = mailboxes
        self.logger = logger
        self.mainCapacity = mainCapacity
        self.outboundCapacity = outboundCapacity
        let useRing: Bool
        if case .none = provided { useRing = false } else { useRing = true }
        self.features = features
        sessions = SessionPool(
            mode: configuration.mode, capacity: capacity, bufferSize: useRing ? 0 : configuration.bufferSize)
        // Accepts, and the closes of sockets over the cap (at most one per spare slot in flight).
        contexts = ContextSlab(
            capacity: configuration.acceptDepth + sharedContexts + (capacity - mainCapacity) + 64, empty: .none)
        remote = mailboxes.ports[ringIndex].remote
        precondition(remote.capacity >= capacity, "the ring's remote tables are sized for its sessions")
        queue = try SendQueue(
            provided: provided, outboundSize: configuration.bufferSize, sessions: useRing ? 0 : capacity,
            capacity: capacity, pool: remote)
        tables = remote.tables
        deferredOperations = .allocate(capacity: capacity)
        deferredOperations.initialize(repeating: 0, count: capacity)
        deferredEpochs = .allocate(capacity: capacity)
        deferredEpochs.initialize(repeating: 0, count: capacity)
        deferredSessions = .allocate(capacity: capacity)
        closedIndices = .allocate(capacity: capacity)
        touchedNext = .allocate(capacity: capacity)
        touchedNext.initialize(repeating: -1, count: capacity)
        isTouched = .allocate(capacity: capacity)
        isTouched.initialize(repeating: false, count: capacity)
        maxPending = configuration.maxPendingBytesPerConnection
        maxOutput = configuration.maxOutputBytesPerConnection
        largestWrite = min(maxOutput, (remote.guaranteed + remote.sharedTotal / 2) * configuration.bufferSize)
        lowWater = configuration.maxPendingBytesPerConnection / 2
        maxOutboundHeld = Int32(max(2, configuration.maxPendingBytesPerConnection / configuration.bufferSize))
        // The byte bound in buffers, plus two for a partly sent head and a partly filled tail: full
        // buffers meet the byte bound first; only many small, uncoalesced writes meet this one.
        maxOutboundPerConnection = (configuration.maxOutputBytesPerConnection + configuration.bufferSize - 1)
            / configuration.bufferSize + 2
        stats.features = features
    }

    deinit {
        deferredOperations.deallocate()
        deferredEpochs.deallocate()
        deferredSessions.deallocate()
        touchedNext.deallocate()
        isTouched.deallocate()
        closedIndices.deallocate()
    }

    /// Whether a connection of `listener` fits: the main listener's within the ring's share of
    /// the cap, another listener's within the sessions reserved for it.
    @inline(__always)
    final func admits(_ listener: UInt8) -> Bool {
        listener == 0
            ? sessions.statistics.inUse - sideSessions.count - outboundOpen < mainCapacity
            : sideOpen[Int(listener)] < sideCapacity[Int(listener)]
    }

    /// Another listener's connection opened.
    final func opened(_ listener: UInt8, _ c: ConnectionRef) {
        sideSessions.append(c.pointee.session.lease.index)
        sideOpen[Int(listener)] += 1
    }

    /// Another listener's connection closed: its bytes are kept apart from the main listener's.
    final func closed(_ listener: UInt8, _ c: ConnectionRef) {
        guard let i = sideSessions.firstIndex(of: c.pointee.session.lease.index) else { return }
        sideSessions.remove(at: i)
        sideOpen[Int(listener)] -= 1
        sideClosedBytesIn &+= c.pointee.bytesIn
        sideClosedBytesOut &+= c.pointee.bytesOut
    }

    /// The live connection an ID names, or nil for a stale ID (its epoch is not the session's).
    @inline(__always)
    final func connection(_ id: ConnectionID) -> ConnectionRef? {
        guard id.ring == ringIndex && id.index >= 0 && id.index < sessions.capacity,
            let c = sessions.record(at: id.index), c.pointee.session.epoch == id.epoch
        else { return nil }
        return c
    }

    @inline(__always)
    final func connectionID(_ c: ConnectionRef) -> ConnectionID {
        ConnectionID(ring: ringIndex, index: c.pointee.session.index, epoch: c.pointee.session.epoch)
    }

    /// The one way a feature the kernel refuses at run time is given up: it leaves ``features``
    /// (and the published statistics), the fallback is logged once and counted. The caller switches
    /// to its fallback.
    final func fallBack(from feature: KernelFeatures, _ why: String) {
        guard features.contains(feature) else { return }
        features.remove(feature)
        stats.features = features
        stats.featureFallbacks &+= 1
        logger.warning("\(why)")
    }

    // MARK: Requests from handles

    final func write(_ bytes: UnsafeRawBufferPointer, to id: ConnectionID) -> WriteResult {
        guard let c = connection(id), c.pointee.lifecycle.acceptsOutput else { return .closed }
        // Behind records of its caller still in the inbox: into the inbox too, to keep the order.
        if busy(id.index) { return writeBehindInbox(bytes, to: id, c) }
        guard c.pointee.output.bytes + bytes.count <= maxOutput else {
            // A write larger than the bound itself can never fit: no writable for it.
            if bytes.count <= maxOutput { c.pointee.lifecycle.writableRequested() }
            stats.writesRefused &+= 1
            return .full
        }
        guard queue.write(bytes, to: c, coalesce: coalesces(c), maxHeld: maxOutboundPerConnection) else {
            c.pointee.lifecycle.writableRequested()
            stats.writesRefused &+= 1
            return .full
        }
        if c.pointee.output.bytes >= maxPending { c.pointee.lifecycle.writableRequested() }
        touch(c)
        return .queued
    }

    /// Whether a write to `c` may fill the room left in its last segment: not during its
    /// `received`, while that segment is the one the in-place reply goes after (the reply would
    /// land inside the write).
    @inline(__always)
    final func coalesces(_ c: ConnectionRef) -> Bool {
        !(Int32(bitPattern: c.pointee.session.lease.index) == replyAnchorSession && c.pointee.output.tail == replyAnchor)
    }

    /// A write on the ring's thread to a connection with inbox records pending: pushed behind them,
    /// reserved as a handle's write is (its room and buffers), so its caller's order holds.
    @inline(never)
    final func writeBehindInbox(_ bytes: UnsafeRawBufferPointer, to id: ConnectionID, _ c: ConnectionRef) -> WriteResult {
        guard !bytes.isEmpty else { return .queued }
        let buffers = remote.buffers(for: bytes.count)
        guard bytes.count <= remote.largestWrite, remote.reserveRoom(id.index, bytes.count, epoch: id.epoch) else {
            c.pointee.lifecycle.writableRequested()
            stats.writesRefused &+= 1
            return .full
        }
        guard remote.reserveBuffers(id.index, buffers) else {
            remote.returnRoom(id.index, bytes.count, epoch: id.epoch)
            c.pointee.lifecycle.writableRequested()
            stats.writesRefused &+= 1
            return .full
        }
        guard remote.push(.write, id.index, id.epoch, bytes) else {
            queue.release(buffers, of: id.index)
            remote.returnRoom(id.index, bytes.count, epoch: id.epoch)
            c.pointee.lifecycle.writableRequested()
            stats.writesRefused &+= 1
            return .full
        }
        _ = remote.inbox.notified.exchange(true, ordering: .acquiringAndReleasing)
        return .queued
    }

    /// A write through a ``ConnectionHandle`` on the ring's own thread, with nothing of its
    /// connection's before it in the inbox: its room and buffers reserved as a remote write's are,
    /// then queued at once (as the inbox's drain would queue it, and after the in-place reply of a
    /// `received` under way, as ``write(_:to:)`` is), so a close through the handle that follows
    /// finds it queued.
    final func writeFromHandle(_ bytes: UnsafeRawBufferPointer, to id: ConnectionID, buffers: Int) -> WriteResult {
        guard let c = connection(id), c.pointee.lifecycle.acceptsOutput else {
            remote.returnRoom(id.index, bytes.count, epoch: id.epoch)
            queue.release(buffers, of: id.index)
            return .closed
        }
        // Room and buffers are reserved: this cannot be refused.
        _ = queue.write(bytes, to: c, coalesce: coalesces(c), reserved: buffers)
        c.pointee.remoteQueued += bytes.count
        touch(c)
        return .queued
    }

    /// Whether an operation asked on this thread for session `index` could overtake an earlier one
    /// of its caller: inbox records of it are pending, or a request kept for the next drain, or an
    /// operation deferred to it.
    @inline(__always)
    final func busy(_ index: Int) -> Bool {
        tables.pendingRecords[index].load(ordering: .acquiring) > 0 || deferredOperations[index] != 0
            || tables.requests[index].load(ordering: .relaxed) != 0
    }

    final func requestWritable(_ id: ConnectionID) {
        guard let c = connection(id), c.pointee.lifecycle.acceptsOutput else { return }
        c.pointee.lifecycle.writableRequested()
    }

    /// ``RingContext/connect(to:timeout:)``: the driver opens the connection (each driver's core
    /// overrides this).
    func connect(to address: SocketAddress, timeout: Duration) -> Result<ConnectionID, ConnectFailure> {
        preconditionFailure("every driver's core opens connections its own way")
    }

    /// Shuts `id`'s output after what is queued, and after what its caller pushed into the inbox
    /// before (``requestClose(_:abort:)``).
    /// Shuts `id`'s output after what is queued, and after what its caller pushed into the inbox
    /// before (``requestClose(_:abort:)``).
    @inline(__always)
    final func requestShutdown(_ id: ConnectionID) { request(.shutdown, id) }

    /// Closes `id` (after what is queued, or at once for an abort). Every way a close is asked on
    /// the ring's thread comes here (``RingContext``, a handle on its own ring, the end of an async
    /// connection's task), so it keeps its place after the writes its caller made before, whichever
    /// way they went: queued at once, or pushed into the inbox (through a handle while records of
    /// the connection were there, or from another thread before the task came here). While the
    /// connection has inbox records pending, the close waits for the next drain and follows it.
    @inline(__always)
    final func requestClose(_ id: ConnectionID, abort: Bool) { request(abort ? .abort : .close, id) }

    /// A close, abort or shutdown, in its caller's order (``requestClose(_:abort:)``). Inlined into
    /// its callers (``RingContext``, a handle): a call would retain the loop around it.
    @inline(__always)
    final func request(_ operation: Operation, _ id: ConnectionID) {
        guard connection(id) != nil else { return }
        let index = id.index
        if busy(index) {
            if deferredOperations[index] == 0 {
                deferredSessions[deferredCount] = Int32(index)
                deferredCount += 1
                deferredEpochs[index] = id.epoch
            }
            deferredOperations[index] |= operation.rawValue
            return
        }
        apply(operation, to: id)
    }

    /// What a close asks (``request(_:_:)``), as a bit of ``deferredOperations``.
    enum Operation: UInt8 {
        case close = 1
        case abort = 2
        case shutdown = 4
    }

    /// Wakes the writers waiting on session `index` (its connection closed): out of line, as it
    /// is rare, so the object is retained only here.
    @inline(never)
    final func wakeWriters(_ index: Int) { remote.wakeWriters(index) }

    /// A close, abort or shutdown, now.
    @inline(__always)
    final func apply(_ operation: Operation, to id: ConnectionID) {
        guard let c = connection(id) else { return }
        let changed =
            switch operation {
            case .close: c.pointee.lifecycle.closeRequested(abort: false)
            case .abort: c.pointee.lifecycle.closeRequested(abort: true)
            case .shutdown: c.pointee.lifecycle.shutdownRequested()
            }
        if changed { touch(c) }
    }

    final func queuedBytes(_ id: ConnectionID) -> Int? { connection(id)?.pointee.output.bytes }

    final func pauseReceiving(_ id: ConnectionID, _ paused: Bool) {
        guard let c = connection(id), c.pointee.lifecycle.pauseRequested(paused) else { return }
        touch(c)
    }

    /// The next connection a callback touched (wrote to, closed, paused, resumed), or nil.
    @inline(__always)
    final func popTouched() -> ConnectionRef? {
        while touchedHead >= 0 {
            let i = Int(touchedHead)
            touchedHead = touchedNext[i]
            isTouched[i] = false
            if let c = sessions.record(at: i) { return c }
        }
        return nil
    }

    @inline(__always)
    final func touch(_ c: ConnectionRef) {
        let i = c.pointee.session.index
        guard !isTouched[i] else { return }
        isTouched[i] = true
        touchedNext[i] = touchedHead
        touchedHead = Int32(i)
    }

    /// A new outbound connection's record, the same on every driver: marked outbound, the listener
    /// whose handler asked for it noted (its bytes count there), its clocks started, connecting.
    final func openOutbound(_ c: ConnectionRef) {
        c.pointee.listener = ConnectionRecord.outbound
        if dispatchingListener != 0 {
            if outboundOrigin.isEmpty { outboundOrigin = Array(repeating: 0, count: sessions.capacity) }
            outboundOrigin[c.pointee.session.index] = dispatchingListener
        } else if !outboundOrigin.isEmpty {
            outboundOrigin[c.pointee.session.index] = 0
        }
        c.pointee.lastActivity = now
        c.pointee.lastProgress = now
        c.pointee.lifecycle.connecting()
        outboundOpen += 1
    }

    /// A closed connection gives back what it held: its send queue and the input held for a
    /// consumer go to `release` segment by segment, its deferred operations are dropped, and
    /// writers waiting on it are woken (their handles now see it closed).
    /// - Returns: how it ended: abnormal if it failed so, or if bytes queued or held were dropped.
    @inline(__always)
    final func giveBackHeld(_ c: ConnectionRef, release: (Int32) -> Void) -> ConnectionEnd {
        let end: ConnectionEnd =
            c.pointee.lifecycle.flags.contains(.abnormal) || c.pointee.output.head >= 0 || c.pointee.inbound.head >= 0
                || c.pointee.inbound.current >= 0 ? .abnormal : .clean
        c.pointee.lifecycle.closeCompleted()
        var segment = queue.detachAll(c)
        while segment >= 0 {
            let following = queue.next[Int(segment)]
            release(segment)
            segment = following
        }
        segment = c.pointee.inbound.head
        while segment >= 0 {
            let following = queue.next[Int(segment)]
            release(segment)
            segment = following
        }
        if c.pointee.inbound.current >= 0 { release(c.pointee.inbound.current) }
        c.pointee.inbound = InboundQueue()
        let index = c.pointee.session.index
        deferredOperations[index] = 0  // nothing deferred outlives its connection
        if tables.closed(index) { wakeWriters(index) }
        return end
    }

    /// At teardown (the stop timed out, or the ring failed): every connection still open ends for
    /// its handles and its handler (an opened one hears `closed`, abnormal; an outbound one that
    /// never opened hears `connectFailed`, cancelled), so nothing waits for them (an async
    /// connection's task, say).
    final func endOpenConnections<H: ConnectionHandler>(_ handler: inout H) {
        for i in 0..<sessions.capacity {
            guard let c = sessions.record(at: i) else { continue }
            remote.closed(c.pointee.session.index)
            if c.pointee.announced {
                handler.closed(connectionID(c), end: .abnormal, ring: RingContext(self))
            } else if c.pointee.listener == ConnectionRecord.outbound {
                handler.connectFailed(connectionID(c), .cancelled, ring: RingContext(self))
            }
        }
    }

    /// A connection is closed and about to be released: counted by where it came from (an outbound
    /// one that never opened, by why it failed).
    /// - Returns: why an outbound connection that never opened failed (its handler hears
    ///   `connectFailed`), or nil (it hears `closed`).
    final func retired(_ c: ConnectionRef) -> ConnectFailure? {
        let listener = c.pointee.listener
        if listener == 0 {
            stats.closed &+= 1
            return nil
        }
        guard listener == ConnectionRecord.outbound else {
            closed(listener, c)
            return nil
        }
        outboundOpen -= 1
        if c.pointee.announced {
            stats.outboundClosed &+= 1
            return nil
        }
        let why = c.pointee.connectFailure
        switch why {
        case .refused: stats.connectsRefused &+= 1
        case .timedOut: stats.connectsTimedOut &+= 1
        case .unreachable: stats.connectsUnreachable &+= 1
        case .capReached: stats.connectsCapped &+= 1
        case .cancelled: stats.connectsCancelled &+= 1
        case .failed: stats.connectsFailed &+= 1
        }
        return why
    }

    /// Wakes ring `target` for its mail from this ring: through its eventfd (the io_uring driver's
    /// core overrides this with `MSG_RING`).
    /// - Returns: whether through `MSG_RING` (false: the eventfd).
    @discardableResult
    func notify(_ target: Int) -> Bool {
        mailboxes.ports[target].wake.signal()
        return false
    }

    /// Fills what only the driver knows of a statistics snapshot (completions or readiness
    /// events, submissions or waits, registered slots).
    func fillDriverStatistics(_ snapshot: inout ServerStatistics) {}
}
