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
    let stallNanoseconds: UInt64
    let publish: (ServerStatistics, Bool) -> Void
    var stopDeadline: UInt64 = 0
    var ticks: UInt64 = 0

    init(core: LoopCore, publish: @escaping (ServerStatistics, Bool) -> Void) {
        let configuration = core.configuration
        wakeFD = core.mailboxes.ports[core.ringIndex].wakeFD
        self.publish = publish
        wakeBuffer = core.mailboxes.wakeBuffer(core.ringIndex)
        idleNanoseconds = configuration.idleTimeout.map { UInt64($0.nanoseconds) } ?? 0
        stallNanoseconds = UInt64(configuration.stallTimeout.nanoseconds)
    }

    func armTick(_ core: URingCore) throws(URingError) {
        try core.ring.prepareTimeout(core.configuration.tickInterval, tag: ControlTag.tick.rawValue)
    }

    func armWake(_ core: URingCore) throws(URingError) {
        try core.ring.prepareRead(.fd(wakeFD), into: wakeBuffer, tag: ControlTag.wake.rawValue)
    }

    /// Why the sweep closes a connection.
    enum Verdict {
        case keep
        /// No progress either way for the idle timeout: closed with a FIN, or with a reset when
        /// output is still queued (the peer took none of it meanwhile).
        case idle(reset: Bool)
        /// Queued output the peer has taken none of for the stall timeout: the peer stopped
        /// reading, and the connection is reset.
        case stalled
    }

    /// The timeout sweep, over every connection not connecting or already closing:
    /// - **stalled**: output is queued and the peer has taken none of it (no send completed) for
    ///   the stall timeout, whatever the state (open, half-closed, paused at its bound), with or
    ///   without an idle timeout;
    /// - **idle**: no progress either way for the idle timeout: nothing received, and nothing of
    ///   what it queued taken by the peer (a connection that only sends is not idle while its peer
    ///   reads), unless the handler paused its receiving.
    /// - Returns: the verdict (counted; the loop closes the connection).
    /// Static, with the timeouts passed in: a method of the stored struct would copy it (and
    /// retain its closure) once per connection per tick.
    @inline(__always)
    static func sweep(_ c: ConnectionRef, _ core: LoopCore, idleNanoseconds: UInt64, stallNanoseconds: UInt64) -> Verdict {
        let lifecycle = c.pointee.lifecycle
        guard lifecycle.phase == .open || lifecycle.phase == .inputClosed else { return .keep }
        if c.pointee.output.head >= 0 && core.now &- c.pointee.lastProgress > stallNanoseconds {
            core.stats.stalledClosed &+= 1
            return .stalled
        }
        guard idleNanoseconds > 0, core.now &- c.pointee.lastActivity > idleNanoseconds else { return .keep }
        if lifecycle.phase == .open && lifecycle.flags.contains(.pausedByHandler) { return .keep }
        core.stats.idleClosed &+= 1
        return .idle(reset: c.pointee.output.head >= 0)
    }

    /// Stop: no new accepts; the caller closes every connection. The timer keeps ticking so the
    /// stop deadline is checked even when nothing else completes.
    /// - Returns: false if the ring was stopping already.
    mutating func beginStop(
        _ core: URingCore, acceptor: borrowing Acceptor, sides: UnsafeMutablePointer<Acceptor>, sideCount: Int
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
        core.fillDriverStatistics(&snapshot)
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
