import Glibc
import Synchronization
import Logging
import SocketPool
import URing

/// What one ring's loop owns, apart from its handler and its receive path: the ring, the
/// connections (one ``ConnectionRecord`` each), the send queues, the shared request contexts
/// (accepts, rejected closes) and the counters. Handles (``Connection``, ``RingContext``)
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
    @exclusivity(unchecked) var contexts: ContextSlab<SharedRequest>
    @exclusivity(unchecked) var sessions: SessionPool<ConnectionRecord>
    @exclusivity(unchecked) var slots: SlotPool?
    @exclusivity(unchecked) var queue: SendQueue
    /// What other threads know and reserve of this ring's connections, and the inbox their
    /// writes, closes and aborts come through (``ConnectionHandle``). The methods the loop calls on
    /// it per connection are inlined: a call would retain it around itself (measured: once per
    /// accepted and per closed connection).
    let remote: RemoteConnections
    @exclusivity(unchecked) var stats = ServerStatistics()
    /// The sessions of the other listeners' connections open now, and the bytes their closed ones
    /// moved: kept out of `active`, `bytesIn` and `bytesOut` when statistics are published, so the
    /// hot path never asks which listener a connection came from.
    @exclusivity(unchecked) var sideSessions: [UInt32] = []
    @exclusivity(unchecked) var sideClosedBytesIn: UInt64 = 0
    @exclusivity(unchecked) var sideClosedBytesOut: UInt64 = 0
    /// By listener number: the other listeners' connections open now, and the sessions each may
    /// take (its cap plus one).
    @exclusivity(unchecked) var sideOpen: [Int]
    let sideCapacity: [Int]
    /// Outbound connections open (or connecting) now, and how many may be.
    @exclusivity(unchecked) var outboundOpen = 0
    let outboundCapacity: Int
    /// The listener whose handler the loop is calling now (0: the main one, or none): set by the
    /// router around each other listener's callbacks, so a connect made there is that listener's.
    @exclusivity(unchecked) var dispatchingListener: UInt8 = 0
    /// Which listener's handler opened each outbound connection, by session index: its callbacks
    /// (opened, connectFailed) go to that handler.
    @exclusivity(unchecked) var outboundOrigin: [UInt8] = []
    @exclusivity(unchecked) var features: KernelFeatures
    @exclusivity(unchecked) var now: UInt64 = 0
    @exclusivity(unchecked) var stopping = false

    /// Receiving pauses at this many queued bytes and resumes at half.
    let maxPending: Int
    /// A write that would queue more than this is refused.
    let maxOutput: Int
    /// The largest write that can ever be queued: the output bound, or what one connection can
    /// ever hold of the outbound buffers (its guarantee and half the shared pool) if that is less.
    /// A waiting writer asking for more would wait for good.
    let largestWrite: Int
    /// ``ConnectionHandler/writable(_:)`` is called once a waiting queue drains to this.
    let lowWater: Int
    /// Receiving pauses while a connection's queue holds this many outbound buffers.
    let maxOutboundHeld: Int32
    /// The ring's share of the connection cap; sessions beyond it are the other listeners'.
    let mainCapacity: Int
    /// Outbound buffers one connection's writes may take.
    let maxOutboundPerConnection: Int

    /// Whether a connection's close posts a completion (``KernelFeatures/quietClose``: not).
    let quietClose: Bool
    /// Connections whose quiet close was submitted during the current completion: recycled once
    /// it has been handled, when nothing on the stack still holds their record.
    let closedIndices: UnsafeMutablePointer<Int32>
    @exclusivity(unchecked) var closedCount = 0

    /// Set by a handler during `received` to keep the received segment (``ConnectionRecord/inbound``)
    /// instead of replying in place: an async connection's bytes wait for their consumer.
    @exclusivity(unchecked) var holdReceived = false
    /// Gives a received segment back to the receive path (set by the loop, which knows it).
    @exclusivity(unchecked) var releaseReceived: (Int32, ConnectionRef) -> Void = { _, _ in }

    /// Connections a callback touched (wrote to, closed, paused), settled when it returns.
    let touchedNext: UnsafeMutablePointer<Int32>
    let isTouched: UnsafeMutablePointer<Bool>
    @exclusivity(unchecked) var touchedHead: Int32 = -1
    /// While the handler's `received` runs: the connection and the queue tail before the call, so
    /// the in-place reply goes in ahead of what the call writes.
    @exclusivity(unchecked) var replyAnchorSession: Int32 = -1
    @exclusivity(unchecked) var replyAnchor: Int32 = -1

    /// Closes, aborts and shutdowns asked on this thread while their connection had inbox records
    /// pending, applied once it has none (after a drain), so they follow every write their caller
    /// pushed before (``requestClose(_:abort:)``): by session, the operations' bits and the
    /// connection's epoch, and the sessions that have any, in the order they were deferred.
    let deferredOperations: UnsafeMutablePointer<UInt8>
    let deferredEpochs: UnsafeMutablePointer<UInt64>
    let deferredSessions: UnsafeMutablePointer<Int32>
    @exclusivity(unchecked) var deferredCount = 0
    /// ``remote``'s per-session tables, as plain pointers: read on every open and close, they
    /// retain nothing (``RemoteTables``).
    let tables: RemoteTables

    init(
        configuration: ServerConfiguration, setup: consuming RingSetup, provided: ProvidedSegments,
        ringIndex: Int, mailboxes: Mailboxes, logger: Logger, listeners: RingListeners
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
        let capacity = setup.capacity
        mainCapacity = setup.mainCapacity
        outboundCapacity = setup.outboundCapacity
        let useRing: Bool
        if case .none = provided { useRing = false } else { useRing = true }
        features = setup.features
        slots = setup.slots.take()
        ring = setup.ring
        sessions = SessionPool(
            mode: configuration.mode, capacity: capacity, bufferSize: useRing ? 0 : configuration.bufferSize)
        // Accepts, and the closes of sockets over the cap (at most one per spare slot in flight).
        contexts = ContextSlab(
            capacity: configuration.acceptDepth + setup.spareSlots + (capacity - mainCapacity) + 64, empty: .none)
        remote = mailboxes.ports[ringIndex].remote
        precondition(remote.capacity >= capacity, "the ring's remote tables are sized for its sessions")
        queue = try SendQueue(
            provided: provided, outboundSize: configuration.bufferSize, sessions: useRing ? 0 : capacity,
            capacity: capacity, pool: remote)
        quietClose = features.contains(.quietClose)
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
        stats.setupFlags = ring.setupFlags
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

    var useSlots: Bool { slots != nil }

    /// Whether a connection of `listener` fits: the main listener's within the ring's share of
    /// the cap, another listener's within the sessions reserved for it.
    @inline(__always)
    func admits(_ listener: UInt8) -> Bool {
        listener == 0
            ? sessions.statistics.inUse - sideSessions.count - outboundOpen < mainCapacity
            : sideOpen[Int(listener)] < sideCapacity[Int(listener)]
    }

    /// Another listener's connection opened.
    func opened(_ listener: UInt8, _ c: ConnectionRef) {
        sideSessions.append(c.pointee.session.lease.index)
        sideOpen[Int(listener)] += 1
    }

    /// Another listener's connection closed: its bytes are kept apart from the main listener's.
    func closed(_ listener: UInt8, _ c: ConnectionRef) {
        guard let i = sideSessions.firstIndex(of: c.pointee.session.lease.index) else { return }
        sideSessions.remove(at: i)
        sideOpen[Int(listener)] -= 1
        sideClosedBytesIn &+= c.pointee.bytesIn
        sideClosedBytesOut &+= c.pointee.bytesOut
    }

    /// The live connection an ID names, or nil for a stale ID (its epoch is not the session's).
    @inline(__always)
    func connection(_ id: ConnectionID) -> ConnectionRef? {
        guard id.ring == ringIndex && id.index >= 0 && id.index < sessions.capacity,
            let c = sessions.record(at: id.index), c.pointee.session.epoch == id.epoch
        else { return nil }
        return c
    }

    @inline(__always)
    func connectionID(_ c: ConnectionRef) -> ConnectionID {
        ConnectionID(ring: ringIndex, index: c.pointee.session.index, epoch: c.pointee.session.epoch)
    }

    /// The one way a feature the kernel refuses at run time is given up: it leaves ``features``
    /// (and the published statistics), the fallback is logged once and counted. The caller switches
    /// to its fallback.
    func fallBack(from feature: KernelFeatures, _ why: String) {
        guard features.contains(feature) else { return }
        features.remove(feature)
        stats.features = features
        stats.featureFallbacks &+= 1
        logger.warning("\(why)")
    }

    // MARK: Requests from handles

    func write(_ bytes: UnsafeRawBufferPointer, to id: ConnectionID) -> WriteResult {
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
    func coalesces(_ c: ConnectionRef) -> Bool {
        !(Int32(bitPattern: c.pointee.session.lease.index) == replyAnchorSession && c.pointee.output.tail == replyAnchor)
    }

    /// A write on the ring's thread to a connection with inbox records pending: pushed behind them,
    /// reserved as a handle's write is (its room and buffers), so its caller's order holds.
    @inline(never)
    func writeBehindInbox(_ bytes: UnsafeRawBufferPointer, to id: ConnectionID, _ c: ConnectionRef) -> WriteResult {
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
    func writeFromHandle(_ bytes: UnsafeRawBufferPointer, to id: ConnectionID, buffers: Int) -> WriteResult {
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
    func busy(_ index: Int) -> Bool {
        tables.pendingRecords[index].load(ordering: .acquiring) > 0 || deferredOperations[index] != 0
            || tables.requests[index].load(ordering: .relaxed) != 0
    }

    func requestWritable(_ id: ConnectionID) {
        guard let c = connection(id), c.pointee.lifecycle.acceptsOutput else { return }
        c.pointee.lifecycle.writableRequested()
    }

    /// ``RingContext/connect(to:timeout:)``: a session (and a slot) for the connection, then its
    /// socket (straight into the slot where the ring can), its connect and the connect's timeout,
    /// linked, in one go.
    func connect(to address: SocketAddress, timeout: Duration) -> Result<ConnectionID, ConnectFailure> {
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

    /// Shuts `id`'s output after what is queued, and after what its caller pushed into the inbox
    /// before (``requestClose(_:abort:)``).
    /// Shuts `id`'s output after what is queued, and after what its caller pushed into the inbox
    /// before (``requestClose(_:abort:)``).
    @inline(__always)
    func requestShutdown(_ id: ConnectionID) { request(.shutdown, id) }

    /// Closes `id` (after what is queued, or at once for an abort). Every way a close is asked on
    /// the ring's thread comes here (``RingContext``, a handle on its own ring, the end of an async
    /// connection's task), so it keeps its place after the writes its caller made before, whichever
    /// way they went: queued at once, or pushed into the inbox (through a handle while records of
    /// the connection were there, or from another thread before the task came here). While the
    /// connection has inbox records pending, the close waits for the next drain and follows it.
    @inline(__always)
    func requestClose(_ id: ConnectionID, abort: Bool) { request(abort ? .abort : .close, id) }

    /// A close, abort or shutdown, in its caller's order (``requestClose(_:abort:)``). Inlined into
    /// its callers (``RingContext``, a handle): a call would retain the loop around it.
    @inline(__always)
    func request(_ operation: Operation, _ id: ConnectionID) {
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
    func wakeWriters(_ index: Int) { remote.wakeWriters(index) }

    /// A close, abort or shutdown, now.
    @inline(__always)
    func apply(_ operation: Operation, to id: ConnectionID) {
        guard let c = connection(id) else { return }
        let changed =
            switch operation {
            case .close: c.pointee.lifecycle.closeRequested(abort: false)
            case .abort: c.pointee.lifecycle.closeRequested(abort: true)
            case .shutdown: c.pointee.lifecycle.shutdownRequested()
            }
        if changed { touch(c) }
    }

    func queuedBytes(_ id: ConnectionID) -> Int? { connection(id)?.pointee.output.bytes }

    func pauseReceiving(_ id: ConnectionID, _ paused: Bool) {
        guard let c = connection(id), c.pointee.lifecycle.pauseRequested(paused) else { return }
        touch(c)
    }

    /// The next connection a callback touched (wrote to, closed, paused, resumed), or nil.
    @inline(__always)
    func popTouched() -> ConnectionRef? {
        while touchedHead >= 0 {
            let i = Int(touchedHead)
            touchedHead = touchedNext[i]
            isTouched[i] = false
            if let c = sessions.record(at: i) { return c }
        }
        return nil
    }

    @inline(__always)
    func touch(_ c: ConnectionRef) {
        let i = c.pointee.session.index
        guard !isTouched[i] else { return }
        isTouched[i] = true
        touchedNext[i] = touchedHead
        touchedHead = Int32(i)
    }

    // MARK: Requests to the ring

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
}
