/// One ring of a server, reachable from any thread or task: post a message to its handler (the
/// `PostQueuedCompletionStatus` of this design, from outside the loops), or run a task on its
/// thread. Get one from ``Server/ring(_:)``, ``AsyncServer/ring(_:)`` or, in a callback,
/// ``RingContext/handle``.
public struct RingHandle: Sendable, Hashable, CustomStringConvertible {
    let port: RingPort

    init(port: RingPort) { self.port = port }

    /// The ring's index in its server.
    public var index: Int { port.index }

    /// The ring's thread as a task executor: a task that prefers it
    /// (`Task(executorPreference: ring.executor) { ... }`) runs on the ring's thread, between turns of
    /// its loop, where it may use the ring's connections' handles with no thread hop. Once the ring
    /// has exited, such tasks run on the global executor.
    public var executor: any TaskExecutor { port.executor }

    /// Posts a copy of `bytes` and `value` to the ring's handler, from any thread, without
    /// waiting: the handler gets them in ``ConnectionHandler/received(message:ring:)`` on the ring's
    /// thread, with ``RingMessage/from`` = ``RingMessage/outside``. One poster's messages arrive in
    /// the order it posted them. Messages share the ring's inbox with the writes of
    /// ``ConnectionHandle``s (``ServerConfiguration/mailboxBytes``).
    /// - Parameters:
    ///   - bytes: the message; at most a quarter of ``ServerConfiguration/mailboxBytes``.
    ///   - value: 64 bits of the poster's choosing.
    /// - Returns: ``PostResult/posted``; ``PostResult/full`` when the inbox has no room now (or the
    ///   message is larger than a quarter of it, and never fits); ``PostResult/noSuchRing`` once the
    ///   ring has stopped. A message that reaches the ring while it is stopping is dropped, as its
    ///   connections are closing.
    @discardableResult
    public func post(_ bytes: UnsafeRawBufferPointer, value: UInt64 = 0) -> PostResult {
        guard !port.exited.load(ordering: .acquiring) else { return .noSuchRing }
        guard port.remote.pushMessage(bytes, value: value) else { return .full }
        port.wakeForInbox()
        return .posted
    }

    /// Posts a copy of `bytes` (``post(_:value:)-(UnsafeRawBufferPointer,_)``).
    @discardableResult
    public func post(_ bytes: [UInt8], value: UInt64 = 0) -> PostResult {
        bytes.withUnsafeBytes { post($0, value: value) }
    }

    public static func == (a: RingHandle, b: RingHandle) -> Bool { a.port === b.port }
    public func hash(into hasher: inout Hasher) { hasher.combine(ObjectIdentifier(port)) }
    /// The ring's index.
    public var description: String { "ring \(index)" }
}
