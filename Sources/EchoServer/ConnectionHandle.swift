import Glibc
import Synchronization
import URing

/// A connection, reachable from any thread or task: the `PostQueuedCompletionStatus` of this
/// design for one connection. Get one from ``Connection/handle`` in a callback (or from an async
/// connection), keep it anywhere, and write, close or abort through it later.
///
/// Writes reach the connection's ring through its inbox: one bounded queue per ring, many
/// producers, the ring the only consumer, woken through its eventfd once per batch of writes (not
/// once per write). Each write's bytes stay together, and one writer's writes arrive in the order
/// it made them. Before its bytes go in, a write reserves them from the connection's room (its
/// output bound, ``ServerConfiguration/maxOutputBytesPerConnection``, given back as bytes are sent)
/// and the outbound buffers they need, so a write that was queued is written, unless the
/// connection closes first.
///
/// A handle names one connection for good: once that connection has closed, even if a new one
/// now uses its session, every call gets ``WriteResult/closed`` (the connection's epoch decides).
///
/// Writes through handles are ordered among themselves, per writer. Against writes made on the
/// ring itself (``Connection/write(_:)-(UnsafeRawBufferPointer)``, an ``AsyncConnection``'s
/// outbound) they take their place when the ring takes its inbox, at the top of its next turn: a
/// task that mixes the two should not count on their order.
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
    /// (``ServerConfiguration/maxOutputBytesPerConnection``), or less where the ring's outbound
    /// buffers or a quarter of its inbox (``ServerConfiguration/mailboxBytes``) hold less. Larger
    /// writes get ``WriteResult/full`` at once: write them in parts.
    public var largestWrite: Int { remote.largestWrite }

    /// Queues a copy of `bytes` for the connection, from any thread, without waiting.
    /// - Parameter bytes: what to send; copied before the call returns.
    /// - Returns: ``WriteResult/queued`` (the bytes will be written in order, unless the
    ///   connection closes first), ``WriteResult/full`` (nothing queued: the connection's room or
    ///   the ring's inbox or outbound buffers are used up, or the bytes exceed ``largestWrite``),
    ///   or ``WriteResult/closed``.
    @discardableResult
    public func tryWrite(_ bytes: UnsafeRawBufferPointer) -> WriteResult {
        guard isOpen, !port.exited.load(ordering: .acquiring) else { return .closed }
        let index = id.index
        let count = bytes.count
        guard count > 0 else { return .queued }
        guard count <= remote.largestWrite else { return .full }
        let buffers = remote.buffers(for: count)
        guard remote.reserveRoom(index, count) else { return .full }
        guard remote.reserveBuffers(buffers) else {
            remote.returnRoom(index, count)
            return .full
        }
        guard remote.push(.write, index, id.epoch, bytes) else {
            remote.returnBuffers(buffers)
            remote.returnRoom(index, count)
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

    /// Queues a copy of `bytes`, waiting while the connection has no room for them: the async
    /// twin of ``ConnectionHandler/writable(_:)``. The writer's task suspends; it resumes once the
    /// peer has read enough (or the connection closed).
    /// - Parameter bytes: what to send.
    /// - Returns: ``WriteResult/queued`` or ``WriteResult/closed``; ``WriteResult/full`` only for
    ///   bytes larger than ``largestWrite``, which can never fit.
    @discardableResult
    public func write(_ bytes: UnsafeRawBufferPointer) async -> WriteResult {
        await write(count: bytes.count) { tryWrite(bytes) }
    }

    /// Tries `attempt` until it is not refused for want of room.
    private func write(count: Int, _ attempt: () -> WriteResult) async -> WriteResult {
        while true {
            let result = attempt()
            guard result == .full, count <= remote.largestWrite, !port.exited.load(ordering: .acquiring) else {
                return result
            }
            let index = id.index
            if remote.room[index].load(ordering: .acquiring) >= count {
                // Room enough, but the inbox or the outbound buffers are full for a moment.
                await Task.yield()
                continue
            }
            await remote.waitForRoom(index) { remote.room[index].load(ordering: .acquiring) >= count || !isOpen }
        }
    }

    /// Queues a copy of `bytes`, waiting for room (``write(_:)-(UnsafeRawBufferPointer)``).
    /// - Parameter bytes: what to send.
    /// - Returns: ``WriteResult/queued`` or ``WriteResult/closed``.
    @discardableResult
    public func write(_ bytes: [UInt8]) async -> WriteResult {
        await write(count: bytes.count) { tryWrite(bytes) }
    }

    /// Queues the UTF-8 bytes of `text`, waiting for room.
    /// - Parameter text: what to send.
    /// - Returns: ``WriteResult/queued`` or ``WriteResult/closed``.
    @discardableResult
    public func write(_ text: String) async -> WriteResult {
        await write(Array(text.utf8))
    }

    /// Closes the connection once what is queued (and what is in the inbox before this) is sent.
    public func close() { request(.close) }

    /// Closes the connection at once, dropping queued output.
    public func abort() { request(.abort) }

    /// Shuts the connection's output once what is queued (and what is in the inbox before this)
    /// is sent, and goes on receiving (``Connection/shutdownOutput()``).
    public func shutdownOutput() { request(.shutdown) }

    private func request(_ operation: RemoteConnections.Operation) {
        guard isOpen else { return }
        // On the ring's own thread (a callback, or a task there), directly: the inbox is drained by
        // this very thread, so waiting for room in it would wait for good.
        if let core = LoopCore.current, core.mailboxes.ports[core.ringIndex] === port {
            if operation == .shutdown { core.requestShutdown(id) } else { core.requestClose(id, abort: operation == .abort) }
            return
        }
        // A close is small: if the inbox is full for a moment, try again until it fits, the
        // connection is gone or its ring has exited.
        while !remote.push(operation, id.index, id.epoch, UnsafeRawBufferPointer(start: nil, count: 0)) {
            guard isOpen, !port.exited.load(ordering: .acquiring) else { return }
            Glibc.sched_yield()
        }
        port.wakeForInbox()
    }

    public static func == (a: ConnectionHandle, b: ConnectionHandle) -> Bool { a.port === b.port && a.id == b.id }
    public func hash(into hasher: inout Hasher) { hasher.combine(id) }
    /// The connection's ID.
    public var description: String { "handle of \(id)" }
}
