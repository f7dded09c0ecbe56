import SocketPool

/// One connection's life as a state machine: its phase, the requests it has in flight, and what
/// it has been asked or is waiting for. Events (a completion, a handler's request, a tick, a stop)
/// change it through one `mutating func` each; after every event the loop calls ``settle(_:_:)``,
/// which decides what to post next and returns it as ``Effects``, free of io_uring detail
/// ("receive", "send queued output", "cancel the receive", "close"), so any transport able to do
/// those could drive it. Every transition is tested as a table, without a ring.
///
/// ```
/// open ──peer EOF / close requested──▶ inputClosed ──output sent, close requested (or output shut)──▶ closing ──close done──▶ closed
///   └────────────error, reset, abort, idle, stalled output, stop─────────────▶ closing
/// ```
///
/// - `open`: receiving (unless paused) and sending. A shutdown of the output (asked by the handler)
///   sends a FIN once what is queued is sent; the connection goes on receiving, and closes once the
///   peer's FIN comes too.
/// - `inputClosed`: nothing more is received (the peer finished, or the handler asked to close);
///   output is still sent, and the connection closes once it is drained and a close was asked for
///   (after a peer's FIN the handler may keep writing: ``ConnectionHandler/inputEnded(_:)``).
/// - `closing`: what is in flight is cancelled (a close with a receive pending would leave the
///   socket open and the receive swallowing the peer's bytes); the close is posted once nothing is.
/// - `closed`: the close completed; the session is recycled.
struct ConnectionLifecycle: Hashable {
    enum Phase: UInt8, Hashable {
        /// An outbound connection whose connect is in flight: output may be queued, nothing is
        /// sent or received yet.
        case connecting
        case open
        case inputClosed
        case closing
        case closed
    }

    /// What the connection has been asked, or waits for.
    struct Flags: OptionSet, Hashable {
        let rawValue: UInt16
        /// The handler asked to close once its output is sent.
        static let closeRequested = Flags(rawValue: 1 << 0)
        /// The handler asked to close at once, dropping output.
        static let abortRequested = Flags(rawValue: 1 << 1)
        /// The handler paused receiving (flow control between connections).
        static let pausedByHandler = Flags(rawValue: 1 << 2)
        /// Receiving paused because the connection holds its bound of unsent bytes or buffers.
        static let pausedForBound = Flags(rawValue: 1 << 3)
        /// The receive ended for want of provided buffers; it waits for buffers to come back.
        static let waitingForBuffers = Flags(rawValue: 1 << 4)
        /// The handler wants ``ConnectionHandler/writable(_:)`` once output drains.
        static let wantsWritable = Flags(rawValue: 1 << 5)
        /// The connection failed: the next settle cancels what is in flight (once).
        static let cancelInFlight = Flags(rawValue: 1 << 6)
        /// The handler asked to shut the output once what is queued is sent (a FIN, input still
        /// read): no more writes.
        static let shutdownRequested = Flags(rawValue: 1 << 7)
        /// The output is shut: the FIN went out.
        static let outputShut = Flags(rawValue: 1 << 8)
        /// The close resets the connection (`SO_LINGER` 0: an RST, not a FIN): an abort, or output
        /// the peer stopped taking.
        static let resetOnClose = Flags(rawValue: 1 << 9)
        /// It ended abnormally: reset by the peer, an error, an abort or stalled output (its peer
        /// may be missing bytes); told to the handler (``ConnectionEnd/abnormal``).
        static let abnormal = Flags(rawValue: 1 << 10)

        // Combinations, made once: an array literal would build an array on each use in debug builds.
        static let closeAsked = Flags(rawValue: closeRequested.rawValue | abortRequested.rawValue)
        static let abortAsked = Flags(rawValue: abortRequested.rawValue | resetOnClose.rawValue | abnormal.rawValue)
        static let abortOrShutdown = Flags(rawValue: abortRequested.rawValue | shutdownRequested.rawValue)
        static let holdingReceive = Flags(
            rawValue: pausedForBound.rawValue | pausedByHandler.rawValue | waitingForBuffers.rawValue)
    }

    /// What to post next, in this order: cancels first, then the send, the close, the receive.
    struct Effects: OptionSet, Hashable {
        let rawValue: UInt8
        /// Cancel the receive (by its `user_data`).
        static let cancelReceive = Effects(rawValue: 1 << 0)
        /// Cancel the send.
        static let cancelSend = Effects(rawValue: 1 << 1)
        /// Send what is queued.
        static let send = Effects(rawValue: 1 << 2)
        /// Close the socket.
        static let close = Effects(rawValue: 1 << 3)
        /// Receive, if buffers allow (the receive path decides: it may arm or make it wait).
        static let receive = Effects(rawValue: 1 << 4)
        /// Not a request: receiving just paused at the bound (counted).
        static let pausedAtBound = Effects(rawValue: 1 << 5)
        /// Shut the output (`shutdown(SHUT_WR)`: a FIN after what was sent).
        static let shutdown = Effects(rawValue: 1 << 6)
        /// Cancel the connect (by its `user_data`).
        static let cancelConnect = Effects(rawValue: 1 << 7)
    }

    /// What ``settle(_:_:)`` needs to know of the connection's output and holdings.
    struct Holdings {
        /// Whether output is queued.
        var queued: Bool
        /// Bytes queued and not yet sent.
        var queuedBytes: Int
        /// Provided buffers (or slices, in units) held.
        var buffersHeld: Int32
        /// Outbound buffers its queue holds.
        var outboundHeld: Int32
        /// Whether received bytes are held for a consumer (``Connection/holdReceived()``): input
        /// is not done until they are taken.
        var inputHeld = false
    }

    /// Where receiving pauses: at any one of these; it resumes once all are at half or below.
    struct Bounds: Hashable {
        var bytes: Int
        var buffers: Int32
        var outbound: Int32
    }

    private(set) var phase = Phase.open
    /// Requests in flight: the session is recycled only when none is.
    private(set) var pending: PendingRequests = []
    private(set) var flags: Flags = []

    // MARK: Events

    /// A request of the connection was posted.
    @inline(__always)
    mutating func posted(_ request: PendingRequests) { pending.insert(request) }

    /// A request's last completion arrived (a multishot receive's last one).
    @inline(__always)
    mutating func ended(_ request: PendingRequests) { pending.remove(request) }

    /// An outbound connection's connect was posted.
    mutating func connecting() { phase = .connecting }

    /// Its connect succeeded: the connection is open.
    mutating func connected() {
        if phase == .connecting { phase = .open }
    }

    /// The peer half-closed (a receive returned 0).
    mutating func peerClosed() {
        if phase == .open { phase = .inputClosed }
    }

    /// A reset or another error, an abort, the idle timeout, stalled output, or a stop: nothing more
    /// is read or written.
    /// - Parameters:
    ///   - abnormal: an error or a reset: the handler hears ``ConnectionEnd/abnormal``.
    ///   - reset: the close resets the connection (stalled output); implies `abnormal`.
    mutating func failed(abnormal: Bool = false, reset: Bool = false) {
        guard phase != .closing && phase != .closed else { return }
        phase = .closing
        flags.remove(.waitingForBuffers)
        flags.insert(.cancelInFlight)
        if abnormal || reset { flags.insert(.abnormal) }
        if reset { flags.insert(.resetOnClose) }
    }

    /// The handler asked to close: after its output (`abort` false) or at once, with a reset.
    /// - Returns: false (nothing changes) when the connection is closing already.
    mutating func closeRequested(abort: Bool) -> Bool {
        guard phase != .closing && phase != .closed else { return false }
        flags.insert(abort ? Flags.abortAsked : .closeRequested)
        return true
    }

    /// The handler paused or resumed receiving. - Returns: whether that changed anything.
    mutating func pauseRequested(_ paused: Bool) -> Bool {
        guard flags.contains(.pausedByHandler) != paused else { return false }
        if paused { flags.insert(.pausedByHandler) } else { flags.remove(.pausedByHandler) }
        return true
    }

    /// The receive ended for want of buffers (`true`), or buffers came back for it (`false`).
    @inline(__always)
    mutating func waitingForBuffers(_ waiting: Bool) {
        if waiting { flags.insert(.waitingForBuffers) } else { flags.remove(.waitingForBuffers) }
    }

    /// The handler wants to hear when output drains (a refused write, or the bound crossed).
    @inline(__always)
    mutating func writableRequested() { flags.insert(.wantsWritable) }

    /// Takes the wish for ``ConnectionHandler/writable(_:)``: true (and forgotten) if the handler
    /// asked for it and may still write.
    @inline(__always)
    mutating func takeWritable() -> Bool {
        guard flags.contains(.wantsWritable), phase != .closing && phase != .closed else { return false }
        flags.remove(.wantsWritable)
        return true
    }

    /// The handler asked to shut the output after what is queued.
    /// - Returns: false (nothing changes) when output is no longer accepted (closing, aborted, or
    ///   shut already).
    mutating func shutdownRequested() -> Bool {
        guard acceptsOutput else { return false }
        flags.insert(.shutdownRequested)
        return true
    }

    /// The shutdown completed (or failed: either way nothing more goes out).
    mutating func shutdownCompleted() {
        pending.remove(.shutdown)
        flags.insert(.outputShut)
    }

    /// The close completed.
    mutating func closeCompleted() {
        pending.remove(.close)
        phase = .closed
    }

    // MARK: Queries

    /// Whether received bytes still go to the handler (they are dropped once a close was decided).
    @inline(__always)
    var acceptsInput: Bool { phase == .open && flags.isDisjoint(with: .closeAsked) }

    /// Whether writes are still queued.
    @inline(__always)
    var acceptsOutput: Bool {
        (phase == .open || phase == .inputClosed || phase == .connecting) && flags.isDisjoint(with: .abortOrShutdown)
    }

    /// Whether an in-place reply is still sent.
    @inline(__always)
    var sendsReplies: Bool { phase != .closing && phase != .closed && !flags.contains(.abortRequested) }

    /// Whether a receive should be posted now (the receive path decides whether it can).
    @inline(__always)
    var wantsReceive: Bool {
        phase == .open && flags.isDisjoint(with: .holdingReceive) && pending.isDisjoint(with: .receiving)
    }

    // MARK: Deciding

    /// Decides what to post after an event, marking each request it returns as in flight (but the
    /// receive, which the receive path marks when it arms one):
    ///
    /// - an abort cancels whatever is in flight, and the close follows once nothing is;
    /// - a close request stops receiving; queued output is still sent;
    /// - output is sent whenever it is queued and no send is in flight;
    /// - once input is closed, output drained and a close asked for, the connection closes;
    /// - an open connection's receiving pauses at its bounds (``Bounds``) and resumes at half of
    ///   them, or stays paused while the handler asks; otherwise a receive is wanted.
    @inline(__always)
    mutating func settle(_ holdings: Holdings, _ bounds: Bounds) -> Effects {
        var effects: Effects = []
        if flags.contains(.abortRequested) { failed() }
        if phase == .connecting {
            // Nothing goes out before the connect completes; a close before then is an abort.
            guard flags.contains(.closeRequested) else { return effects }
            failed()
        }
        if flags.contains(.cancelInFlight) {
            flags.remove(.cancelInFlight)
            cancel(.recv, &effects)
            cancel(.send, &effects)
            cancel(.connect, &effects)
        }
        if flags.contains(.closeRequested) && phase == .open {
            phase = .inputClosed
            flags.remove(.waitingForBuffers)
            cancel(.recv, &effects)
        }
        if phase == .closing || phase == .closed {
            closeIfIdle(&effects)
            return effects
        }
        if !pending.contains(.send) && holdings.queued {
            effects.insert(.send)
            pending.insert(.send)
        } else if flags.contains(.shutdownRequested) && !flags.contains(.outputShut) && !holdings.queued
            && !pending.contains(.send) && !pending.contains(.shutdown)
        {
            // Output drained, a shutdown asked for: the FIN goes after what was sent.
            effects.insert(.shutdown)
            pending.insert(.shutdown)
        } else if phase == .inputClosed && !holdings.queued && !pending.contains(.send) && !pending.contains(.shutdown)
            && (flags.contains(.closeRequested) || (flags.contains(.outputShut) && !holdings.inputHeld))
        {
            // Input closed, output drained, a close asked for (or the output shut and the input
            // taken by its consumer: both directions are done): close (cancelling the receive if
            // one is still armed).
            phase = .closing
            cancel(.recv, &effects)
            closeIfIdle(&effects)
            return effects
        }
        guard phase == .open else { return effects }
        // Bytes, and buffers: a peer that trickles small requests and never reads could otherwise
        // pin a whole provided or outbound buffer per few bytes.
        if holdings.queuedBytes >= bounds.bytes || holdings.buffersHeld >= bounds.buffers
            || holdings.outboundHeld >= bounds.outbound
        {
            if !flags.contains(.pausedForBound) {
                flags.insert(.pausedForBound)
                effects.insert(.pausedAtBound)
                cancel(.recv, &effects)
            }
        } else if flags.contains(.pausedForBound) && holdings.queuedBytes <= bounds.bytes / 2
            && holdings.buffersHeld <= bounds.buffers / 2 && holdings.outboundHeld <= bounds.outbound / 2
        {
            flags.remove(.pausedForBound)
        }
        if flags.contains(.pausedByHandler) { cancel(.recv, &effects) }
        if wantsReceive { effects.insert(.receive) }
        return effects
    }

    /// Cancels `request` by its `user_data` (Linux 5.5), unless it is not in flight or a cancel of
    /// it already is.
    @inline(__always)
    private mutating func cancel(_ request: PendingRequests, _ effects: inout Effects) {
        let (bit, effect): (PendingRequests, Effects) =
            request == .recv
            ? (.cancelRecv, .cancelReceive) : request == .send ? (.cancelSend, .cancelSend) : (.cancelConnect, .cancelConnect)
        guard pending.contains(request), !pending.contains(bit) else { return }
        pending.insert(bit)
        effects.insert(effect)
    }

    @inline(__always)
    private mutating func closeIfIdle(_ effects: inout Effects) {
        guard phase == .closing, pending.isEmpty else { return }
        pending.insert(.close)
        effects.insert(.close)
    }
}
