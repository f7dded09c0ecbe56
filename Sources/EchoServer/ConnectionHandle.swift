import Glibc
import Synchronization
import URing

/// A connection, reachable from any thread or task: the `PostQueuedCompletionStatus` of this
/// design for one connection. Get one from ``Connection/handle`` in a callback (or from an async
/// connection), keep it anywhere, and write, close or abort through it later.
///
/// From other threads, writes reach the connection's ring through its inbox: one bounded queue
/// per ring, many producers, the ring the only consumer, woken through its eventfd once per batch
/// of writes (not once per write). Each write's bytes stay together, and one writer's writes
/// arrive in the order it made them. Before its bytes go in, a write reserves them from the
/// connection's room (its output bound, ``ServerConfiguration/maxOutputBytesPerConnection``, given
/// back as bytes are sent) and the outbound buffers they need (the connection's guarantee, then its
/// share of the ring's shared pool), so a write that was queued is written, unless the connection
/// closes first. On the ring's own thread (a callback, or a task there) a write is queued at once
/// while the inbox is empty, and goes behind what is in it otherwise.
///
/// A handle names one connection for good: once that connection has closed, even if a new one
/// now uses its session, every call gets ``WriteResult/closed`` (the connection's epoch decides).
///
/// Operations keep the order their caller made them in, whichever way each goes: a close, abort or
/// shutdown takes effect after every write the same thread or task made before it (through this
/// handle, or on the ring: ``Connection/write(_:)-(UnsafeRawBufferPointer)``, an
/// ``AsyncConnection``'s outbound), and so does the close at the end of an async connection's task.
/// Writes of different threads are ordered only by when they reach the inbox.
public struct ConnectionHandle: Sendable, Hashable, CustomStringConvertible {
    let port: RingPort
    /// The connection.
    public let id: ConnectionID

    init(port: RingPort, id: ConnectionID) {
        self.port = port
        self.id = id
    }

    var remote: RemoteConnections { port.remote }

    /// Whether the connection is still the one this handle names.
    public var isOpen: Bool {
        id.index >= 0 && id.index < remote.capacity && id.ring == port.index
            && remote.epochs[id.index].load(ordering: .acquiring) == id.epoch
    }

    /// The largest write that can ever go through a handle: the connection's output bound
    /// (``ServerConfiguration/maxOutputBytesPerConnection``), or less where its guaranteed outbound
    /// buffers (``ServerConfiguration/guaranteedOutputBytesPerConnection``) or a quarter of its
    /// ring's inbox (``ServerConfiguration/mailboxBytes``) hold less. Larger writes get
    /// ``WriteResult/full`` at once: write them in parts. One of this size fits once the
    /// connection's queue has drained, whatever other connections hold.
    public var largestWrite: Int { remote.largestWrite }

    /// The ring's loop, when the caller runs on it: the connection's own ring's thread.
    private var loopHere: LoopCore? {
        guard let core = LoopCore.current, core.mailboxes.ports[core.ringIndex] === port else { return nil }
        return core
    }

    /// Queues a copy of `bytes` for the connection, from any thread, without waiting.
    /// - Parameter bytes: what to send; copied before the call returns.
    /// - Returns: ``WriteResult/queued`` (the bytes will be written in order, unless the
    ///   connection closes first), ``WriteResult/full`` (nothing queued: the connection's room or
    ///   outbound buffers, or the ring's inbox, are used up for now, or the bytes exceed
    ///   ``largestWrite``), or ``WriteResult/closed``.
    @discardableResult
    public func tryWrite(_ bytes: UnsafeRawBufferPointer) -> WriteResult {
        guard isOpen, !port.exited.load(ordering: .acquiring) else { return .closed }
        let index = id.index
        let count = bytes.count
        guard count > 0 else { return .queued }
        guard count <= remote.largestWrite else { return .full }
        let buffers = remote.buffers(for: count)
        guard remote.reserveRoom(index, count, epoch: id.epoch) else { return isOpen ? .full : .closed }
        guard remote.reserveBuffers(index, buffers) else {
            remote.returnRoom(index, count, epoch: id.epoch)
            return .full
        }
        // On the ring's own thread with nothing before it in the inbox: queued now, so that what
        // this thread asks next (a close) finds it queued.
        if let core = loopHere, !core.busy(index) { return core.writeFromHandle(bytes, to: id, buffers: buffers) }
        guard remote.push(.write, index, id.epoch, bytes) else {
            remote.releaseBuffers(index, buffers)
            remote.returnRoom(index, count, epoch: id.epoch)
            return .full
        }
        port.wakeForInbox()
        return .queued
    }

    /// Queues a copy of `bytes` without waiting.
    /// - Parameter bytes: what to send.
    /// - Returns: as ``tryWrite(_:)-(UnsafeRawBufferPointer)``.
    @discardableResult
    public func tryWrite(_ bytes: [UInt8]) -> WriteResult { bytes.withUnsafeBytes { tryWrite($0) } }

    /// Queues the UTF-8 bytes of `text` without waiting.
    /// - Parameter text: what to send.
    /// - Returns: as ``tryWrite(_:)-(UnsafeRawBufferPointer)``.
    @discardableResult
    public func tryWrite(_ text: String) -> WriteResult {
        var text = text
        return text.withUTF8 { tryWrite(UnsafeRawBufferPointer($0)) }
    }

    /// Queues a copy of `bytes`, waiting while the connection has no room or no outbound buffers
    /// for them: the async twin of ``ConnectionHandler/writable(_:)``. The writer's task suspends
    /// (it takes no CPU meanwhile); it resumes once the peer has read enough, the connection
    /// closed, or the task is cancelled.
    /// - Parameter bytes: what to send.
    /// - Returns: ``WriteResult/queued`` or ``WriteResult/closed``; ``WriteResult/full`` for bytes
    ///   larger than ``largestWrite``, which can never fit, or when the task was cancelled while it
    ///   waited (nothing was queued; `Task.isCancelled` tells).
    @discardableResult
    public func write(_ bytes: UnsafeRawBufferPointer) async -> WriteResult {
        await write(count: bytes.count) { tryWrite(bytes) }
    }

    /// Tries `attempt` until it is not refused for want of room or buffers, the connection
    /// closes, or the task is cancelled.
    private func write(count: Int, _ attempt: () -> WriteResult) async -> WriteResult {
        while true {
            let result = attempt()
            guard result == .full, count <= remote.largestWrite, !port.exited.load(ordering: .acquiring),
                !Task.isCancelled
            else {
                return result
            }
            let index = id.index
            let epoch = id.epoch
            let buffers = remote.buffers(for: count)
            let inbox = remote.inbox
            // Short of room only: its own sends give it back. Short of buffers or inbox space: the
            // shared pool and the inbox free up with others' progress too.
            let shared = remote.roomLeft(index, epoch: epoch) >= count
            await remote.wait(index, shared: shared) {
                // Sequentially consistent loads (roomLeft, couldReserveBuffers, hasRoom), as the
                // ring's returns: no wake-up is lost between a refusal and the wait.
                !isOpen
                    || remote.roomLeft(index, epoch: epoch) >= count && remote.couldReserveBuffers(index, buffers)
                        && inbox.hasRoom(for: count)
            }
        }
    }

    /// Queues a copy of `bytes`, waiting for room (``write(_:)-(UnsafeRawBufferPointer)``).
    /// - Parameter bytes: what to send.
    /// - Returns: as ``write(_:)-(UnsafeRawBufferPointer)``.
    @discardableResult
    public func write(_ bytes: [UInt8]) async -> WriteResult {
        await write(count: bytes.count) { tryWrite(bytes) }
    }

    /// Queues the UTF-8 bytes of `text`, waiting for room.
    /// - Parameter text: what to send.
    /// - Returns: as ``write(_:)-(UnsafeRawBufferPointer)``.
    @discardableResult
    public func write(_ text: String) async -> WriteResult {
        await write(Array(text.utf8))
    }

    /// Closes the connection once what is queued (and what this caller wrote before) is sent.
    public func close() { request(.close) }

    /// Closes the connection at once, dropping queued output: the peer gets a reset.
    public func abort() { request(.abort) }

    /// Shuts the connection's output once what is queued (and what this caller wrote before) is
    /// sent, and goes on receiving (``Connection/shutdownOutput()``).
    public func shutdownOutput() { request(.shutdown) }

    /// A close, abort or shutdown: never waits. On the ring's own thread it acts at once, unless the
    /// inbox holds records, which it then follows (``LoopCore/requestClose(_:abort:)``); elsewhere it
    /// goes into the inbox, or, when that is full, into the session's request word, which the ring
    /// takes before its next drain and applies after it.
    private func request(_ operation: RemoteConnections.Operation) {
        guard isOpen else { return }
        if let core = loopHere {
            if operation == .shutdown { core.requestShutdown(id) } else { core.requestClose(id, abort: operation == .abort) }
            return
        }
        if !remote.push(operation, id.index, id.epoch, UnsafeRawBufferPointer(start: nil, count: 0)) {
            remote.keep(operation, id.index, epoch: id.epoch)
        }
        port.wakeForInbox()
    }

    public static func == (a: ConnectionHandle, b: ConnectionHandle) -> Bool { a.port === b.port && a.id == b.id }
    public func hash(into hasher: inout Hasher) { hasher.combine(id) }
    /// The connection's ID.
    public var description: String { "handle of \(id)" }
}
