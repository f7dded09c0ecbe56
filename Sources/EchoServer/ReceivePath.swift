import SocketPool
import URing

/// How a loop receives: where bytes land, which segment they become in the send queue, and when a
/// receive may be posted. The loop is generic over it (``CompletionLoop``), so its calls
/// specialise: no existential, no dynamic dispatch per completion.
protocol ReceivePath: ~Copyable {
    /// Buffers one connection may hold before its receiving pauses (counted in ``ConnectionRecord/buffersHeld``).
    var maxHeldPerConnection: Int32 { get }
    /// Buffers taken by receives and not yet given back (0 when idle).
    var buffersHeld: Int { get }
    /// Whether `c` is the last completion of its receive request.
    func ended(_ c: Completion) -> Bool
    /// Posts a receive for `s`.
    mutating func arm(_ s: ConnectionRef, core: URingCore) throws(URingError)
    /// For a session that wants to receive: posts a receive if it can now, or queues it to be
    /// re-armed when what it waits for (its own buffer, or any provided buffer) comes back.
    mutating func armOrWait(_ s: ConnectionRef, core: URingCore) throws(URingError)
    /// The bytes of a data completion (`result > 0`) and the send-queue segment that holds them;
    /// the segment counts as held by `s` until ``release(_:of:)``. Nil when the bytes cannot be
    /// held (an incremental ring's slice table ran out): they are dropped, and the loop closes
    /// the connection, whose stream now has a hole.
    mutating func take(_ c: Completion, _ s: ConnectionRef) -> (UnsafeMutableRawBufferPointer, Int32)?
    /// Gives back a buffer that a completion carried but nobody will read (EOF, error, stale).
    mutating func discard(_ c: Completion)
    /// Gives back a segment of this strategy once sent or dropped; `s` is its holder.
    mutating func release(_ segment: Int32, of s: ConnectionRef)
    /// The receive of `s` ended with `ENOBUFS`: it waits for buffers to come back.
    mutating func waitForBuffers(_ s: ConnectionRef)
    /// After each batch: publish returned buffers and re-arm the sessions that waited for them.
    mutating func afterBatch(core: URingCore) throws(URingError)
    /// At the end: unregister from the ring.
    mutating func teardown(core: URingCore)
    /// How many segments a data completion carries (a bundle: several buffers).
    func parts(_ c: Completion) -> Int
    /// Segment `part` of a data completion (``take(_:_:)`` is part 0).
    mutating func take(_ c: Completion, _ s: ConnectionRef, part: Int)
        -> (UnsafeMutableRawBufferPointer, Int32)?
    /// A receive of `s` ended with `error`: whether the strategy gave up a feature the kernel
    /// refused (the loop then receives again instead of closing).
    mutating func fallBack(after error: Errno, core: URingCore) -> Bool
}

extension ReceivePath where Self: ~Copyable {
    @inline(__always) func parts(_ c: Completion) -> Int { 1 }

    @inline(__always)
    mutating func take(_ c: Completion, _ s: ConnectionRef, part: Int)
        -> (UnsafeMutableRawBufferPointer, Int32)?
    { take(c, s) }

    mutating func fallBack(after error: Errno, core: URingCore) -> Bool { false }
}
