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

    func armTick(_ core: LoopCore) throws(URingError) {
        try core.ring.prepareTimeout(core.configuration.tickInterval, tag: ControlTag.tick.rawValue)
    }

    func armWake(_ core: LoopCore) throws(URingError) {
        try core.ring.prepareRead(.fd(wakeFD), into: wakeBuffer, tag: ControlTag.wake.rawValue)
    }

    /// The timeout sweep, over every connection not already closing: one whose queued output has
    /// not moved for the idle timeout is closed, whatever its state (open, half-closed, paused at
    /// its bound); one with nothing queued that received nothing for the idle timeout is closed
    /// too, unless the handler paused its receiving.
    /// - Returns: whether `c` is to be closed (counted; the loop closes it).
    func sweep(_ c: ConnectionRef, _ core: LoopCore) -> Bool {
        let lifecycle = c.pointee.lifecycle
        guard idleNanoseconds > 0, lifecycle.phase != .closing else { return false }
        if c.pointee.output.head >= 0 {
            guard core.now &- c.pointee.lastProgress > idleNanoseconds else { return false }
            core.stats.stalledClosed &+= 1
        } else if lifecycle.phase == .inputClosed {
            // The peer finished and the handler keeps the connection open: idle once nothing was
            // received or sent for the idle timeout.
            guard core.now &- max(c.pointee.lastActivity, c.pointee.lastProgress) > idleNanoseconds else {
                return false
            }
            core.stats.idleClosed &+= 1
        } else {
            guard lifecycle.phase == .open && !lifecycle.flags.contains(.pausedByHandler),
                core.now &- c.pointee.lastActivity > idleNanoseconds
            else { return false }
            core.stats.idleClosed &+= 1
        }
        return true
    }

    /// Stop: no new accepts; the caller closes every connection. The timer keeps ticking so the
    /// stop deadline is checked even when nothing else completes.
    /// - Returns: false if the ring was stopping already.
    mutating func beginStop(
        _ core: LoopCore, acceptor: borrowing Acceptor, sides: UnsafeMutablePointer<Acceptor>, sideCount: Int
    ) throws(URingError) -> Bool {
        guard !core.stopping else { return false }
        core.stopping = true
        stopDeadline = core.now &+ UInt64(core.configuration.stopTimeout.nanoseconds)
        try acceptor.cancelAll(core)
        for i in 0..<sideCount { try sides[i].cancelAll(core) }
        return true
    }

    /// A snapshot of the counters, handed to the server (a lock, once per tick and at the end).
    @discardableResult
    func publishStatistics(_ core: LoopCore, buffersHeld: Int, report: Bool = true) -> ServerStatistics {
        var snapshot = core.stats
        snapshot.active = core.sessions.statistics.inUse - core.sideSessions.count - core.outboundOpen
        snapshot.outboundActive = core.outboundOpen
        var endpointIn = core.sideClosedBytesIn
        var endpointOut = core.sideClosedBytesOut
        for index in core.sideSessions {
            guard let s = core.sessions.record(at: Int(index)) else { continue }
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
