import SocketPool

/// A message posted by a handler on another ring of the same server (``RingContext/post(_:value:toRing:)``),
/// the `PostQueuedCompletionStatus` of this design.
public struct RingMessage {
    /// The ring that posted it.
    public let from: Int
    /// A 64-bit value of the sender's choosing.
    public let value: UInt64
    /// The bytes posted, valid only during the call.
    public let bytes: UnsafeRawBufferPointer
}
