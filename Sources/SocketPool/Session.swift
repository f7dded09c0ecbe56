/// Where a connection is in its life.
public enum SessionState: UInt8, Sendable {
    /// Not in use.
    case free
    /// Reading and writing.
    case open
    /// The peer half-closed (recv returned 0): finish sending what was received, then close.
    case halfClosed
    /// Closing: no new requests; waiting for in-flight ones and the close to complete.
    case closing
}

/// One connection's state, kept at a stable address by the ``SessionPool``.
///
/// The IOCP design's per-socket session object: its descriptor, the count of requests in flight
/// (`IoCount`), its buffer and the bookkeeping a byte-stream server needs.
@frozen
public struct Session {
    /// The session's index in the pool.
    public var index: UInt32
    /// The session's generation (moves on at every recycle).
    public var generation: UInt32
    /// The socket: a fixed slot (pooled) or a plain fd (unpooled, or a fallback).
    public var file: FileRef
    /// The slot lease's generation when ``file`` is a slot.
    public var slotGeneration: UInt32
    /// Requests in flight for this session (the IOCP `IoCount`). The session is recycled only at 0.
    public var inFlight: Int32
    /// Life-cycle state.
    public var state: SessionState
    /// Whether a receive is in flight (or armed, for multishot).
    public var receiving: Bool
    /// Whether a send is in flight.
    public var sending: Bool
    /// Whether a cancel has been issued for this session's requests.
    public var cancelIssued: Bool
    /// The session's own buffer (empty when receives use a shared buffer ring).
    public var buffer: UnsafeMutableRawBufferPointer
    /// Bytes received and not yet sent on (start of the unsent data in ``buffer``).
    public var pendingStart: Int
    /// Bytes received and not yet sent on (end of the unsent data in ``buffer``).
    public var pendingEnd: Int
    /// Monotonic time of the last received byte, in nanoseconds.
    public var lastActivity: UInt64
    /// Total bytes received.
    public var bytesIn: UInt64
    /// Total bytes sent.
    public var bytesOut: UInt64
    /// Free for the handler.
    public var user: UInt64

    /// A free session with `buffer`.
    /// - Parameters:
    ///   - index: its pool index.
    ///   - buffer: its buffer.
    public init(index: UInt32, buffer: UnsafeMutableRawBufferPointer) {
        self.index = index
        generation = 0
        file = .fd(-1)
        slotGeneration = 0
        inFlight = 0
        state = .free
        receiving = false
        sending = false
        cancelIssued = false
        self.buffer = buffer
        pendingStart = 0
        pendingEnd = 0
        lastActivity = 0
        bytesIn = 0
        bytesOut = 0
        user = 0
    }

    /// Bytes received but not yet sent.
    public var pendingBytes: Int { pendingEnd - pendingStart }
}

/// A session's address in its pool plus the generation it had when handed out.
@frozen
public struct SessionHandle: Hashable, Sendable, CustomStringConvertible {
    /// Pool index.
    public let index: UInt32
    /// Generation at acquisition.
    public let generation: UInt32

    /// Creates a handle.
    /// - Parameters:
    ///   - index: pool index.
    ///   - generation: generation.
    public init(index: UInt32, generation: UInt32) {
        self.index = index
        self.generation = generation
    }

    /// `session 4.g2`.
    public var description: String { "session \(index).g\(generation)" }
}
