import SocketPool
import URing

// The loop's own completions: the tick, the wake-up (stop, or mail through the eventfd) and mail
// notifications posted by other rings.
extension CompletionLoop where Receiver: ~Copyable {
    func onTick() throws(URingError) {
        housekeeping.ticks &+= 1
        if !core.stopping {
            try housekeeping.sweepIdle(core)
            try acceptor.resumeIfPaused(core)
        }
        let snapshot = housekeeping.publishStatistics(core, buffersHeld: receiver.buffersHeld)
        if housekeeping.ticks % 40 == 0 { core.logger.debug("statistics: \(snapshot)") }
        try housekeeping.armTick(core)
    }

    func onWake(_ c: Completion) throws(URingError) {
        if core.mailboxes.stopRequested.load(ordering: .acquiring) {
            try housekeeping.beginStop(core, listener: acceptor.listener, acceptsInFlight: acceptor.inFlight)
        }
        for from in 0..<core.mailboxes.count { try deliverMail(from: from) }
        if !core.stopping { try housekeeping.armWake(core) }
    }

    /// Hands every message in the mailbox from ring `from` to the handler, in order.
    func deliverMail(from: Int) throws(URingError) {
        let box = core.mailboxes.box(from: from, to: core.ringIndex)
        guard box.notified.exchange(false, ordering: .acquiringAndReleasing) else { return }
        try box.drain { (value, bytes) throws(URingError) in
            core.stats.delivered &+= 1
            guard !core.stopping else { return }
            handler.received(message: RingMessage(from: from, value: value, bytes: bytes), ring: RingContext(core))
            try flushDirty()
        }
    }
}
