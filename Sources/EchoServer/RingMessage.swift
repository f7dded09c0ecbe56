import SocketPool

/// A message posted by a handler on another ring of the same server (``RingContext/post(_:value:toRing:)``),
/// or from any thread through a ``RingHandle``: the `PostQueuedCompletionStatus` of this design.
public struct RingMessage {
    /// The ring that posted it, or ``outside`` for a post through a ``RingHandle``.
    public let from: Int
    /// ``from`` of a message posted through a ``RingHandle`` (from any thread or task).
    public static let outside = -1
    /// A 64-bit value of the sender's choosing.
    public let value: UInt64
    /// The bytes posted, valid only during the call.
    public let bytes: UnsafeRawBufferPointer
}
