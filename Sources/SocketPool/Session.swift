import URing

/// Where a connection is in its life.
///
/// ```
/// open ──peer EOF / close requested──▶ halfClosed ──output sent──▶ closing ──close CQE──▶ free
///   └───────────────error, reset, abort, idle, stop────────────────▶ closing
/// ```
public enum SessionState: UInt8, Sendable {
    /// Not in use.
    case free
    /// Reading and writing.
    case open
    /// No more reading: the peer half-closed (recv returned 0) or the handler asked to close once
    /// its output is sent. Queued output is still sent; then the connection closes.
    case halfClosed
    /// Closing: no new requests; in-flight ones are cancelled, and the close is posted once none is
    /// left.
    case closing
}

/// The requests a connection can have in flight, one bit each. A connection owns one request
/// context per kind, as an IOCP session embeds its `OVERLAPPED`s: its tags are made from its own
/// index and generation, so running out of shared contexts can never strand it.
@frozen
public struct PendingRequests: OptionSet, Sendable, Hashable {
    /// Raw bits.
    public let rawValue: UInt8
    /// Wraps raw bits.
    @inlinable public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// A receive (or an armed multishot receive).
    public static let recv = PendingRequests(rawValue: 1 << 0)
    /// A send.
    public static let send = PendingRequests(rawValue: 1 << 1)
    /// A cancel of the receive, by its `user_data`.
    public static let cancelRecv = PendingRequests(rawValue: 1 << 2)
    /// A cancel of the send, by its `user_data`.
    public static let cancelSend = PendingRequests(rawValue: 1 << 3)
    /// The close (or `close_direct`).
    public static let close = PendingRequests(rawValue: 1 << 4)

    /// The bit for a request kind a connection owns, or `nil` for a kind it does not.
    /// - Parameter kind: the operation.
    @inlinable
    public init?(_ kind: OperationKind) {
        switch kind {
        case .recv: self = .recv
        case .send: self = .send
        case .cancel: self = .cancelRecv
        case .cancelSend: self = .cancelSend
        case .close: self = .close
        default: return nil
        }
    }
}

/// One connection: everything the completion loop knows of it, kept at a stable address by the
/// ``SessionPool``.
///
/// The IOCP design's per-socket session object: its descriptor, the requests it has in flight
/// (`IoCount`, here one bit per owned request), its buffer, its receive state and its send queue.
@frozen
public struct Session {
    /// The session's index in the pool.
    public var index: UInt32
    /// The session's generation (moves on at every recycle; 24 bits, as it rides in request tags).
    public var generation: UInt32
    /// Which connection this is, over the pool's whole life (64 bits: never repeats, unlike
    /// ``generation``, which wraps after 2^24 reuses of one index).
    public var epoch: UInt64
    /// The socket: a fixed slot (pooled) or a plain fd (unpooled, or a fallback).
    public var file: FileRef
    /// The slot lease's generation when ``file`` is a slot.
    public var slotGeneration: UInt32
    /// Life-cycle state.
    public var state: SessionState
    /// Requests in flight, one bit per kind the session owns.
    public var pending: PendingRequests
    /// The session's own buffer (empty when receives use a shared buffer ring).
    public var buffer: UnsafeMutableRawBufferPointer

    // Receive state.
    /// Receiving is paused because queued output reached its bound.
    public var pausedForBound: Bool
    /// Receiving is paused because the handler asked (flow control between connections).
    public var pausedByHandler: Bool
    /// Waiting for provided buffers to come back (the receive ended with `ENOBUFS`).
    public var waitingForBuffers: Bool
    /// Provided buffers this connection holds (received and not yet sent or returned); with an
    /// incremental ring, the buffers its slices' bytes would fill (at least one per slice).
    public var buffersHeld: Int32

    /// Outbound buffers this connection's queue holds.
    public var outboundHeld: Int32

    // Send queue: a singly linked list of segments (see the loop's send queue).
    /// First segment to send, or -1.
    public var queueHead: Int32
    /// Last segment, or -1.
    public var queueTail: Int32
    /// Bytes of the head segment already sent.
    public var headSent: Int32
    /// Bytes queued and not yet sent.
    public var queuedBytes: Int
    /// The handler asked to hear when queued output drains (a refused write, or the bound crossed).
    public var wantsWritable: Bool
    /// The handler asked to close once output is sent.
    public var closeRequested: Bool
    /// The handler asked to abort.
    public var abortRequested: Bool
    /// Which of the server's listeners accepted it: 0 for the main one, 1 for a secondary one
    /// (such as a metrics endpoint).
    public var listener: UInt8

    /// Monotonic time of the last received byte, in nanoseconds.
    public var lastActivity: UInt64
    /// Monotonic time the send queue last moved (a send posted or completed), in nanoseconds.
    public var lastProgress: UInt64
    /// Total bytes received.
    public var bytesIn: UInt64
    /// Total bytes sent.
    public var bytesOut: UInt64

    /// A free session with `buffer`.
    /// - Parameters:
    ///   - index: its pool index.
    ///   - buffer: its buffer.
    public init(index: UInt32, buffer: UnsafeMutableRawBufferPointer) {
        self.index = index
        generation = 0
        epoch = 0
        file = .fd(-1)
        slotGeneration = 0
        state = .free
        pending = []
        self.buffer = buffer
        pausedForBound = false
        pausedByHandler = false
        waitingForBuffers = false
        buffersHeld = 0
        outboundHeld = 0
        queueHead = -1
        queueTail = -1
        headSent = 0
        queuedBytes = 0
        wantsWritable = false
        closeRequested = false
        abortRequested = false
        listener = 0
        lastActivity = 0
        lastProgress = 0
        bytesIn = 0
        bytesOut = 0
    }

    /// Requests in flight (the IOCP `IoCount`). The session is recycled only at 0.
    @inlinable public var inFlight: Int { pending.rawValue.nonzeroBitCount }

    /// The handle naming this incarnation of the session.
    @inlinable public var handle: SessionHandle { SessionHandle(index: index, generation: generation) }

    /// The tag of this session's own request of `kind` (its `user_data`).
    /// - Parameter kind: one of the kinds a session owns (``PendingRequests/init(_:)``).
    @inlinable
    public func tag(_ kind: OperationKind) -> RequestTag {
        RequestTag(index: index, generation: generation, kind: kind)
    }
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
    @inlinable
    public init(index: UInt32, generation: UInt32) {
        self.index = index
        self.generation = generation
    }

    /// `session 4.g2`.
    public var description: String { "session \(index).g\(generation)" }
}
