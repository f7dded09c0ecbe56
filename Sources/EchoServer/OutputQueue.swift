import SocketPool
import URing

/// A connection's send queue: a singly linked list of segments of the ring's ``SendQueue``.
struct OutputQueue {
    /// First segment to send, or -1.
    var head: Int32 = -1
    /// Last segment, or -1.
    var tail: Int32 = -1
    /// Bytes of the head segment already sent.
    var headSent: Int32 = 0
    /// Bytes queued and not yet sent.
    var bytes = 0
    /// Outbound buffers the queue holds.
    var outboundHeld: Int32 = 0
}

/// Received segments held for a consumer (``ConnectionRecord/inbound``): a singly linked list of
/// segments of the ring's ``SendQueue`` (a segment is in one list at a time), and the segment the
/// consumer has now.
struct InboundQueue {
    /// First held segment, or -1.
    var head: Int32 = -1
    /// Last held segment, or -1.
    var tail: Int32 = -1
    /// The segment being consumed (taken off the list, not yet released), or -1.
    var current: Int32 = -1
}
