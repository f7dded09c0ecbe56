import Logging
import SocketPool
import URing

/// The loop's timer and its wake-up descriptor: the idle sweep and paused-accept retry on each
/// tick, statistics published once per tick, and stop.
struct Housekeeping {
    let wakeFD: Int32
    /// The eventfd read lands here: memory of the server's ``Mailboxes``, which outlive the ring (a
    /// read may be pending until the ring exits).
    let wakeBuffer: UnsafeMutableRawBufferPointer
    let idleNanoseconds: UInt64
    let publish: (ServerStatistics, Bool) -> Void
    var stopDeadline: UInt64 = 0
    var ticks: UInt64 = 0

    init(core: LoopCore, publish: @escaping (ServerStatistics, Bool) -> Void) {
        let configuration = core.configuration
        wakeFD = core.mailboxes.ports[core.ringIndex].wakeFD
        self.publish = publish
        wakeBuffer = core.mailboxes.wakeBuffer(core.ringIndex)
        idleNanoseconds = configuration.idleTimeout.map { UInt64($0.nanoseconds) } ?? 0
    }

    static let tickTag = RequestTag(index: 0, generation: 0, kind: .timeout)
    static let wakeTag = RequestTag(index: 0, generation: 0, kind: .wake)
    static let acceptCancelTag = RequestTag(index: 0, generation: 1, kind: .wake)

    func armTick(_ core: LoopCore) throws(URingError) {
        try core.ring.prepareTimeout(core.configuration.tickInterval, tag: Self.tickTag.rawValue)
    }

    func armWake(_ core: LoopCore) throws(URingError) {
        try core.ring.prepareRead(.fd(wakeFD), into: wakeBuffer, tag: Self.wakeTag.rawValue)
    }

    /// The timeout sweep, over every connection not already closing: one whose queued output has
    /// not moved for the idle timeout is closed, whatever its state (open, half-closed, paused at
    /// its bound); one with nothing queued that received nothing for the idle timeout is closed
    /// too, unless the handler paused its receiving.
    /// - Returns: whether `s` was closed.
    func sweep(_ s: UnsafeMutablePointer<Session>, _ core: LoopCore) throws(URingError) -> Bool {
        guard idleNanoseconds > 0, s.pointee.state != .closing else { return false }
        if s.pointee.queueHead >= 0 {
            guard core.now &- s.pointee.lastProgress > idleNanoseconds else { return false }
            core.stats.stalledClosed &+= 1
        } else {
            guard s.pointee.state == .open && !s.pointee.pausedByHandler,
                core.now &- s.pointee.lastActivity > idleNanoseconds
            else { return false }
            core.stats.idleClosed &+= 1
        }
        try core.beginClose(s)
        return true
    }

    /// Stop: no new accepts, every connection closed; the timer keeps ticking so the stop deadline
    /// is checked even when nothing else completes.
    mutating func beginStop(
        _ core: LoopCore, acceptor: borrowing Acceptor, secondary: borrowing Acceptor?
    ) throws(URingError) {
        guard !core.stopping else { return }
        core.stopping = true
        stopDeadline = core.now &+ UInt64(core.configuration.stopTimeout.nanoseconds)
        try acceptor.cancelAll(core, tag: Self.acceptCancelTag)
        try secondary?.cancelAll(core, tag: Self.acceptCancelTag)
        for i in 0..<core.sessions.capacity {
            if let s = core.sessions.session(at: i) { try core.beginClose(s) }
        }
    }

    /// A snapshot of the counters, handed to the server (a lock, once per tick and at the end).
    @discardableResult
    func publishStatistics(_ core: LoopCore, buffersHeld: Int, report: Bool = true) -> ServerStatistics {
        var snapshot = core.stats
        snapshot.active = core.sessions.statistics.inUse - core.endpointSessions.count
        var endpointIn = core.endpointClosedBytesIn
        var endpointOut = core.endpointClosedBytesOut
        for index in core.endpointSessions {
            guard let s = core.sessions.session(at: Int(index)) else { continue }
            endpointIn &+= s.pointee.bytesIn
            endpointOut &+= s.pointee.bytesOut
        }
        snapshot.bytesIn &-= endpointIn
        snapshot.bytesOut &-= endpointOut
        snapshot.sessions = core.sessions.statistics
        snapshot.contexts = core.contexts.statistics
        if let slotStatistics = core.slots?.statistics { snapshot.slots = slotStatistics }
        snapshot.completions = core.ring.statistics.completions
        snapshot.submits = core.ring.statistics.submitCalls
        snapshot.completionQueueOverflows =
            UInt64(core.ring.completionQueueOverflow) + core.ring.statistics.overflowedHarvests
        snapshot.buffersHeld = buffersHeld
        snapshot.outboundBuffersInUse = core.queue.outboundCount - core.queue.outboundAvailable
        publish(snapshot, report)
        return snapshot
    }
}

extension Duration {
    var nanoseconds: Int64 {
        let (s, atto) = components
        return s * 1_000_000_000 + atto / 1_000_000_000
    }
}
