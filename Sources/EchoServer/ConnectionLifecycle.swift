import SocketPool
import URing

/// The events that move a connection through its states.
enum LifecycleEvent: Sendable, Hashable, CaseIterable {
    /// The peer half-closed (recv returned 0).
    case peerClosed
    /// The handler asked to close once output is sent (``Reply/close``, ``Connection/close()``).
    case closeRequested
    /// Everything queued was sent.
    case drained
    /// A reset or another error, an abort, the idle timeout, stalled output, or a stop.
    case failed
    /// The close completed.
    case closeCompleted
}

/// The connection state machine, as a pure function so every transition can be tested alone:
///
/// | from | peerClosed | closeRequested | drained | failed | closeCompleted |
/// |---|---|---|---|---|---|
/// | open | halfClosed | halfClosed | open | closing | — |
/// | halfClosed | halfClosed | halfClosed | closing | closing | — |
/// | closing | closing | closing | closing | closing | free |
///
/// The loop applies the effects: entering `halfClosed` cancels the receive; entering `closing`
/// cancels whatever is in flight (by `user_data`) and posts the close once nothing is; `free`
/// recycles the session, its slot and its buffers.
enum ConnectionLifecycle {
    static func next(_ state: SessionState, _ event: LifecycleEvent) -> SessionState {
        switch (state, event) {
        case (.free, _): return .free
        case (.closing, .closeCompleted): return .free
        case (.closing, _): return .closing
        case (_, .closeCompleted): return state  // a close completes only after one was posted
        case (_, .failed): return .closing
        case (.open, .peerClosed), (.open, .closeRequested): return .halfClosed
        case (.open, .drained): return .open
        case (.halfClosed, .drained): return .closing
        case (.halfClosed, _): return .halfClosed
        }
    }
}

extension LoopCore {
    /// open → halfClosed: no more receiving; queued output still goes out, then the close.
    func stopReceiving(_ s: UnsafeMutablePointer<Session>) throws(URingError) {
        s.pointee.state = ConnectionLifecycle.next(s.pointee.state, .closeRequested)
        s.pointee.waitingForBuffers = false
        try cancel(s, .recv)
    }

    /// → closing: cancel what is in flight (a close with a recv pending would leave the socket open
    /// and the recv swallowing the peer's bytes), and close once nothing is. Safe to call in any
    /// state and any number of times: a closing connection always ends in a close completion.
    func beginClose(_ s: UnsafeMutablePointer<Session>) throws(URingError) {
        s.pointee.state = ConnectionLifecycle.next(s.pointee.state, .failed)
        s.pointee.waitingForBuffers = false
        try cancel(s, .recv)
        try cancel(s, .send)
        try finishCloseIfIdle(s)
    }

    /// Posts the close of a closing session once nothing else is in flight.
    func finishCloseIfIdle(_ s: UnsafeMutablePointer<Session>) throws(URingError) {
        guard s.pointee.state == .closing, s.pointee.pending.isEmpty else { return }
        try ring.prepareClose(s.pointee.file, tag: s.pointee.tag(.close).rawValue)
        s.pointee.pending.insert(.close)
    }

    /// Cancels the session's own receive or send by its `user_data` (Linux 5.5), unless it is not
    /// in flight or a cancel of it already is.
    func cancel(_ s: UnsafeMutablePointer<Session>, _ request: PendingRequests) throws(URingError) {
        let (target, kind, bit): (OperationKind, OperationKind, PendingRequests) =
            request == .recv ? (.recv, .cancel, .cancelRecv) : (.send, .cancelSend, .cancelSend)
        guard s.pointee.pending.contains(request), !s.pointee.pending.contains(bit) else { return }
        try ring.prepareCancel(s.pointee.tag(target).rawValue, tag: s.pointee.tag(kind).rawValue)
        s.pointee.pending.insert(bit)
    }

    /// What to do once a session's queue or in-flight requests changed: close a drained
    /// half-closed session, or post the close of a closing one.
    func closeIfDone(_ s: UnsafeMutablePointer<Session>) throws(URingError) {
        switch s.pointee.state {
        case .halfClosed where s.pointee.queueHead < 0 && !s.pointee.pending.contains(.send):
            s.pointee.state = ConnectionLifecycle.next(.halfClosed, .drained)
            try beginClose(s)
        case .closing:
            try finishCloseIfIdle(s)
        default:
            break
        }
    }
}
