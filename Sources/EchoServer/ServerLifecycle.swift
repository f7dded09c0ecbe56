import URing

/// The server's own life as a state machine, apart from the threads and locks that drive it:
///
/// ```
/// notStarted ──start──▶ starting ──rings ready──▶ serving ──stop / a ring failed──▶ stopping
///     │                    │ stop: remembered, delivered once the rings exist          │
///     └──stop──▶ stopped   └──────────────────────────────────────────────────────────┴──rings ended──▶ stopped / failed
/// ```
///
/// Each event is one `mutating func` that returns what the caller must do; the caller holds the
/// server's lock while calling it and acts after. So a `stop()` is never lost, whenever it comes:
/// before ``Server/start()`` it makes the start throw; while starting it is delivered as soon as
/// the rings' wake-ups exist; later it wakes every ring.
struct ServerLifecycle {
    enum State {
        case notStarted
        /// Listeners and rings are being set up; `mailboxes` exist once the rings' wake-ups do.
        case starting(mailboxes: Mailboxes?, stopRequested: Bool)
        case serving(Mailboxes)
        case stopping(Mailboxes)
        /// Every ring thread has ended. `started` is false after a stop that came before any start.
        case stopped(started: Bool)
        /// A ring ended on an error and took the server down; every ring thread has ended.
        case failed(ServerError)
    }

    private(set) var state = State.notStarted
    /// Ring threads started and not yet ended.
    private var ringThreads = 0
    /// The first ring failure, kept while the other rings wind down.
    private var failure: ServerError?

    enum StartAction: Equatable {
        case proceed
        case throwAlreadyStarted
        case throwStopped
    }

    /// ``Server/start()`` was called.
    mutating func startRequested() -> StartAction {
        switch state {
        case .notStarted:
            state = .starting(mailboxes: nil, stopRequested: false)
            return .proceed
        case .stopped(started: false):
            return .throwStopped
        case .starting, .serving, .stopping, .stopped, .failed:
            return .throwAlreadyStarted
        }
    }

    /// What the caller does after a stop request.
    enum StopAction {
        /// Nothing: already stopping, stopped, or no ring exists yet to wake.
        case none
        /// Set the rings' stop flag and wake each one.
        case wake(Mailboxes)
        /// A stop before any start: the server is stopped now; release its waiters.
        case stoppedBeforeStart
    }

    /// The rings' mailboxes and wake-ups exist, and `threads` ring threads are about to start.
    /// - Returns: ``StopAction/wake(_:)`` when a stop came while starting.
    mutating func ringsCreated(_ mailboxes: Mailboxes, threads: Int) -> StopAction {
        guard case .starting(_, let stop) = state else { return .none }
        state = .starting(mailboxes: mailboxes, stopRequested: stop)
        ringThreads = threads
        return stop ? .wake(mailboxes) : .none
    }

    /// Setup failed before any ring thread started: nothing is left running.
    /// - Returns: whether the server stopped now (the caller releases its waiters).
    mutating func startFailed() -> Bool {
        guard case .starting = state else { return false }
        state = .stopped(started: true)
        return true
    }

    /// Every ring is serving.
    mutating func ringsReady() {
        guard case .starting(let mailboxes?, let stop) = state else { return }
        state = stop ? .stopping(mailboxes) : .serving(mailboxes)
    }

    /// ``Server/stop()`` was called, or a ring failed.
    mutating func stopRequested() -> StopAction {
        switch state {
        case .notStarted:
            state = .stopped(started: false)
            return .stoppedBeforeStart
        case .starting(let mailboxes, _):
            state = .starting(mailboxes: mailboxes, stopRequested: true)
            return mailboxes.map { .wake($0) } ?? .none
        case .serving(let mailboxes), .stopping(let mailboxes):
            state = .stopping(mailboxes)
            return .wake(mailboxes)
        case .stopped, .failed:
            return .none
        }
    }

    /// Ring `ring` ended on an error: the server stops, and will report this failure.
    mutating func ringFailed(_ ring: Int, _ error: URingError) -> StopAction {
        if failure == nil { failure = .ringFailed(ring: ring, error) }
        return stopRequested()
    }

    /// A ring thread ended (its ring, listener and loop released).
    /// - Returns: whether it was the last: the server has stopped, and the caller releases its
    ///   waiters.
    mutating func ringThreadEnded() -> Bool {
        ringThreads -= 1
        guard ringThreads == 0 else { return false }
        switch state {
        case .starting, .serving, .stopping:
            state = failure.map { .failed($0) } ?? .stopped(started: true)
            return true
        case .notStarted, .stopped, .failed:
            return false
        }
    }

    /// The mailboxes, while rings exist.
    var mailboxes: Mailboxes? {
        switch state {
        case .starting(let mailboxes, _): mailboxes
        case .serving(let mailboxes), .stopping(let mailboxes): mailboxes
        case .notStarted, .stopped, .failed: nil
        }
    }

    /// Why the server stopped by itself, if it did.
    var failureReported: ServerError? { if case .failed(let error) = state { error } else { failure } }

    /// Whether the server was never started (nor stopped).
    var isNotStarted: Bool { if case .notStarted = state { true } else { false } }
}
