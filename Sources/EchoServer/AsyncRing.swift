import Synchronization
import URing

/// One ring's side of the async API: the connections it accepted, handed to the server's
/// `serve` loop through ``accepted``, and each one's reader and writer waiting for their
/// connection. Everything but ``accepted`` and ``executor`` is touched only on the ring's thread
/// (the tasks of its connections run there; see ``RingExecutor``).
final class AsyncRing: @unchecked Sendable {  // the per-connection state is only touched on the ring's thread; `accepted` is an AsyncStream, `executor` is set once before any connection exists
    let index: Int
    let accepted: AsyncStream<AsyncConnection>
    let acceptedContinuation: AsyncStream<AsyncConnection>.Continuation
    /// The ring's executor, once the server has started: written once by ``attach(_:)``, before
    /// any connection reaches a task (the task group's `addTask` orders the write before every
    /// read), and read on every await of a connection's task, so without a lock.
    nonisolated(unsafe) private(set) var executor: RingExecutor?
    /// Set (releasing) once ``executor`` is: what a thread outside the server's tasks reads first.
    private let attached = Atomic<Bool>(false)
    /// The ring's port (its connections' handles go through it), once started.
    private let portBox = Mutex<RingPort?>(nil)

    // Ring-thread state, per session index.
    unowned(unsafe) var core: LoopCore!
    var epochs: [UInt64] = []
    var readers: [UnsafeContinuation<UnsafeRawBufferPointer?, Never>?] = []
    var writers: [UnsafeContinuation<Void, Never>?] = []
    /// Writers waiting beside the first on one connection (several tasks writing to it): rare,
    /// so kept apart from the per-connection slots.
    var moreWriters: [Int: [UnsafeContinuation<Void, Never>]] = [:]
    /// Each connection's chunk counter: a chunk is valid while its number is the current one.
    var chunkNumbers: [UInt64] = []
    /// The task waiting for each outbound connection's connect (``AsyncServer/withConnection(to:timeout:_:)``).
    var connectWaiters: [UnsafeContinuation<ConnectFailure?, Never>?] = []

    init(index: Int) {
        self.index = index
        (accepted, acceptedContinuation) = AsyncStream.makeStream(of: AsyncConnection.self, bufferingPolicy: .unbounded)
    }

    var port: RingPort? { portBox.withLock { $0 } }

    func attach(_ port: RingPort) {
        portBox.withLock { $0 = port }
        executor = port.executor
        attached.store(true, ordering: .releasing)
    }

    // MARK: Ring-thread side (the bridge handler's callbacks)

    func start(capacity: Int) {
        epochs = Array(repeating: 0, count: capacity)
        readers = Array(repeating: nil, count: capacity)
        writers = Array(repeating: nil, count: capacity)
        chunkNumbers = Array(repeating: 0, count: capacity)
        connectWaiters = Array(repeating: nil, count: capacity)
    }

    func opened(_ connection: Connection) {
        core = connection.ring.core
        let index = connection.index
        epochs[index] = connection.id.epoch
        chunkNumbers[index] = 0
        if connection.isOutbound {
            if let waiter = connectWaiters[index] {
                connectWaiters[index] = nil
                waiter.resume(returning: nil)
            } else {
                // Opened by a listener's sync handler (outbound connections reach the main
                // handler): no task owns it, so it is not left open.
                connection.abort()
            }
            return
        }
        acceptedContinuation.yield(
            AsyncConnection(ring: self, id: connection.id, handle: connection.handle, listener: connection.listener))
    }

    func received(_ connection: Connection) {
        core.holdReceived = true
        // The segment is held once this returns; a waiting reader takes it when it runs.
        if let reader = readers[connection.index] {
            readers[connection.index] = nil
            reader.resume(returning: nil)  // nil here means "look again"
        }
    }

    func inputEnded(_ connection: Connection) {
        // Not closed: the connection's task may keep writing until it returns.
        wakeReader(connection.index)
    }

    func writable(_ connection: Connection) { wakeWriter(connection.index) }

    func connectFailed(_ id: ConnectionID, _ failure: ConnectFailure) {
        if let waiter = connectWaiters[id.index] {
            connectWaiters[id.index] = nil
            waiter.resume(returning: failure)
        }
    }

    func closed(_ id: ConnectionID) {
        epochs[id.index] = 0
        chunkNumbers[id.index] &+= 1
        wakeReader(id.index)
        wakeWriter(id.index)
    }

    func wakeReader(_ index: Int) {
        if let reader = readers[index] {
            readers[index] = nil
            reader.resume(returning: nil)
        }
    }

    func wakeWriter(_ index: Int) {
        if let writer = writers[index] {
            writers[index] = nil
            writer.resume()
        }
        if !moreWriters.isEmpty, let more = moreWriters.removeValue(forKey: index) {
            for writer in more { writer.resume() }
        }
    }

    /// The ring's executor for a caller on any thread (nil before the server has started).
    var attachedExecutor: RingExecutor? { attached.load(ordering: .acquiring) ? executor : nil }

    /// Whether the caller runs on the ring's thread: a task resumed after its ring has exited runs
    /// on the global executor, and must not touch the ring's state.
    @inline(__always)
    var onRing: Bool { executor?.isCurrent == true }

    // MARK: The connection's task (on the ring's thread)

    /// The live record of `id`, on the ring's thread; nil once it has closed.
    @inline(__always)
    func record(_ id: ConnectionID) -> ConnectionRef? {
        epochs[id.index] == id.epoch ? core.connection(id) : nil
    }

    /// The next chunk of `id`'s input, waiting for it; nil at its end (the peer's FIN, or the
    /// connection closed), or once the calling task is cancelled. The previous chunk goes back
    /// first.
    nonisolated(nonsending) func next(_ id: ConnectionID) async -> InboundChunk? {
        while true {
            guard let c = record(id) else { return nil }
            core.releaseCurrent(c)
            chunkNumbers[id.index] &+= 1
            if let bytes = core.takeInbound(c) {
                return InboundChunk(ring: self, id: id, number: chunkNumbers[id.index], bytes: bytes)
            }
            // Nothing held: the input has ended, or wait for more. One reader waits at a time: a
            // second one reading the same connection at once gets the end.
            if c.pointee.lifecycle.phase != .open || readers[id.index] != nil || Task.isCancelled { return nil }
            let index = id.index
            _ = await withTaskCancellationHandler {
                await withUnsafeContinuation { readers[index] = $0 }
            } onCancel: {
                onRingLater { ring in ring.wakeReader(index) }
            }
            guard onRing, !Task.isCancelled else { return nil }
        }
    }

    /// Runs `body` on the ring's thread soon, from any thread (a cancellation handler): as a job
    /// of its executor. Rare, so the task it takes is no matter. Nothing runs once the ring has
    /// exited (its teardown has woken every waiter).
    private nonisolated func onRingLater(_ body: @escaping @Sendable (AsyncRing) -> Void) {
        guard let executor = attachedExecutor else { return }
        Task(executorPreference: executor) { [self] in
            if executor.isCurrent { body(self) }
        }
    }

    /// Opens a connection to `address` from this ring and waits until it connects or fails. A
    /// cancelled task cancels the connect.
    nonisolated(nonsending) func connect(to address: SocketAddress, timeout: Duration) async -> Result<AsyncConnection, ConnectFailure> {
        guard let port, let core = core ?? LoopCore.current, core.mailboxes.ports[core.ringIndex] === port else { return .failure(.cancelled) }
        self.core = core
        let id: ConnectionID
        switch core.connect(to: address, timeout: timeout) {
        case .failure(let failure): return .failure(failure)
        case .success(let connected): id = connected
        }
        let executor = port.executor
        let failure = await withTaskCancellationHandler {
            await withUnsafeContinuation { connectWaiters[id.index] = $0 }
        } onCancel: {
            // From any thread: the abort goes to the ring as a job (a handle cannot reach a
            // connection before it opens). Rare, so the task it takes is no matter.
            Task(executorPreference: executor) { [self] in
                // Only while it still connects: once open, the connection is the body's.
                if executor.isCurrent, connectWaiters[id.index] != nil { self.core.requestClose(id, abort: true) }
            }
        }
        if let failure { return .failure(failure) }
        return .success(AsyncConnection(ring: self, id: id, handle: ConnectionHandle(port: port, id: id), listener: -1))
    }

    /// Whether `chunk` is still the one its connection's consumer has.
    @inline(__always)
    func isCurrent(_ chunk: InboundChunk) -> Bool {
        epochs[chunk.id.index] == chunk.id.epoch && chunkNumbers[chunk.id.index] == chunk.number
    }

    /// Writes `count` bytes to `id` (`attempt` tries the write), waiting while its output is at
    /// its bound or its share of the outbound buffers is taken.
    /// - Returns: what the write did; nil when the task was cancelled while it waited (nothing
    ///   queued).
    nonisolated(nonsending) func write(count: Int, to id: ConnectionID, _ attempt: () -> WriteResult) async -> WriteResult? {
        while true {
            let result = attempt()
            guard result == .full, count <= core.largestWrite, record(id) != nil else { return result }
            if Task.isCancelled { return nil }
            let index = id.index
            await withTaskCancellationHandler {
                await withUnsafeContinuation { (writer: UnsafeContinuation<Void, Never>) in
                    if writers[index] == nil {
                        writers[index] = writer
                    } else {
                        moreWriters[index, default: []].append(writer)
                    }
                }
            } onCancel: {
                // Every writer of the connection looks again; those not cancelled wait again.
                onRingLater { ring in ring.wakeWriter(index) }
            }
            guard onRing else { return .closed }
        }
    }

    /// Sends `chunk` (the one being consumed) as it is: zero copy.
    /// - Returns: what it did; nil when writes of its connection wait in the inbox, which the chunk
    ///   may not overtake (the caller copies it behind them).
    func send(_ chunk: InboundChunk) -> WriteResult? {
        guard let c = record(chunk.id) else { return .closed }
        guard c.pointee.lifecycle.acceptsOutput else { return .closed }
        if core.busy(chunk.id.index) { return nil }
        core.sendCurrent(c)
        chunkNumbers[chunk.id.index] &+= 1  // the chunk is the send queue's now
        return .queued
    }

    /// The connection's task ended: close after what is queued, or at once after an error. The
    /// chunk being consumed goes back, and is no longer valid (a chunk returned from the body, or
    /// kept past it, would read another connection's bytes once its buffer is reused).
    func finish(_ id: ConnectionID, abort: Bool) {
        if let c = record(id) {
            core.releaseCurrent(c)
            chunkNumbers[id.index] &+= 1
        }
        core.requestClose(id, abort: abort)
    }
}

/// The handler of an async server's rings: it keeps each connection's bytes for its task and
/// wakes the task's reader and writer (``AsyncRing``).
struct AsyncBridge: ConnectionHandler {
    let ring: AsyncRing

    mutating func start(capacity: Int) { ring.start(capacity: capacity) }
    mutating func opened(_ connection: Connection) { ring.opened(connection) }
    mutating func received(_ bytes: UnsafeMutableRawBufferPointer, connection: Connection) -> Reply {
        ring.received(connection)
        return .nothing
    }
    mutating func inputEnded(_ connection: Connection) { ring.inputEnded(connection) }
    mutating func writable(_ connection: Connection) { ring.writable(connection) }
    mutating func closed(_ connection: ConnectionID) { ring.closed(connection) }
    mutating func connectFailed(_ connection: ConnectionID, _ failure: ConnectFailure, ring context: RingContext) {
        ring.connectFailed(connection, failure)
    }
}
