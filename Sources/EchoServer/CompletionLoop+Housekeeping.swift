import SocketPool
import URing

// The loop's own completions: the tick, the wake-up (stop, or mail through the eventfd) and mail
// notifications posted by other rings.
extension CompletionLoop where Receiver: ~Copyable {
    func onTick() throws(URingError) {
        housekeeping.ticks &+= 1
        if !core.stopping {
            let idle = housekeeping.idleNanoseconds
            let stall = housekeeping.stallNanoseconds
            for i in 0..<core.sessions.capacity {
                guard let c = core.sessions.record(at: i) else { continue }
                switch Housekeeping.sweep(c, core, idleNanoseconds: idle, stallNanoseconds: stall) {
                case .keep: break
                case .idle(let reset):
                    c.pointee.lifecycle.failed(reset: reset)
                    try settle(c)
                    continue
                case .stalled:
                    // The peer stopped reading: a reset frees its queue at once, on both ends.
                    c.pointee.lifecycle.failed(reset: true)
                    try settle(c)
                    continue
                }
                // A refusal for want of outbound buffers has no send of its own to wait for: retry.
                if c.pointee.output.head < 0 && core.queue.outboundAvailable > 0 && c.pointee.lifecycle.takeWritable() {
                    handler.writable(Connection(core.connectionID(c), core))
                    try afterCallback(c)
                }
            }
            try resumeAccepting()
        }
        let snapshot = housekeeping.publishStatistics(core, buffersHeld: receiver.buffersHeld)
        if housekeeping.ticks % 40 == 0 { core.logger.debug("statistics: \(snapshot)") }
        try housekeeping.armTick(core)
    }

    func onWake(_ c: Completion) throws(URingError) {
        // A wake-up that cannot be read means the ring can no longer be stopped or woken for mail:
        // end the ring (and with it the server), saying why, rather than re-arm into the same error.
        if c.result < 0, let errno = c.error, errno != .interrupted && errno != .wouldBlock {
            if errno == .canceled { return }
            throw URingError("read wake-up eventfd", errno: errno)
        }
        if core.mailboxes.stopRequested.load(ordering: .acquiring),
            try housekeeping.beginStop(core, acceptor: acceptor, sides: sides, sideCount: sideCount)
        {
            for i in 0..<core.sessions.capacity {
                guard let c = core.sessions.record(at: i) else { continue }
                c.pointee.lifecycle.failed()
                try settle(c)
            }
        }
        let fault = core.mailboxes.ports[core.ringIndex].injectedFault.exchange(0, ordering: .acquiringAndReleasing)
        if fault != 0 { core.ring.injectEnterFailure(Errno(rawValue: fault)) }
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
            try settleTouched()
        }
    }
}
