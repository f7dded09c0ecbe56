import SocketPool
import Synchronization
import URing

/// One ring as other threads see it: its ring descriptor (for `MSG_RING`), its wake-up eventfd,
/// the executor its tasks run on, whether it has exited, and a fault to inject into its next
/// `io_uring_enter` (tests).
final class RingPort: Sendable {
    /// The ring's index in its server.
    let index: Int
    /// The ring's fd, published once the ring exists (-1 before). It stays open until every ring of
    /// the server has exited, so a `MSG_RING` never reaches a reused descriptor number.
    let descriptor = Atomic<Int32>(-1)
    /// The fallback wake-up, and the stop signal.
    let wake: WakeDescriptor
    /// The eventfd's number (the ring's own read of it).
    var wakeFD: Int32 { wake.fd }
    /// Set when the ring's loop has ended (stopped or failed): posts to it are refused.
    let exited = Atomic<Bool>(false)
    /// An errno to inject into the ring's next `io_uring_enter`, read on its wake-up (tests).
    let injectedFault = Atomic<Int32>(0)

    /// The ring's thread as a task executor (``RingExecutor``).
    let executor: RingExecutor
    /// What other threads may know and reserve of the ring's connections, and its inbox.
    let remote: RemoteConnections

    /// Inbox wake-ups sent by another ring of the server with `MSG_RING` rather than the eventfd.
    let inboxWakesByMessageRing = Atomic<UInt64>(0)

    init(index: Int, wakeFD: Int32, remote: RemoteConnections) {
        self.index = index
        wake = WakeDescriptor(wakeFD)
        self.remote = remote
        executor = RingExecutor(wake: wake)
    }

    /// Marks the inbox as holding records and wakes the ring for it, once per batch (the ring,
    /// which looks at the mark every turn, clears it before it drains; its own thread needs no
    /// wake-up). From another ring of the same server (a callback, or a task on that ring) the wake
    /// is a `MSG_RING` that rides that ring's next submit; from any other thread, an eventfd write.
    func wakeForInbox() {
        guard !remote.inbox.notified.exchange(true, ordering: .acquiringAndReleasing), !executor.isCurrent else {
            return
        }
        if let sender = LoopCore.current, index < sender.mailboxes.count, sender.mailboxes.ports[index] === self,
            sender.features.contains(.messageRing)
        {
            // Any completion wakes the ring, which then finds the mark: the mail wake serves (its
            // mailbox from the sender is left alone unless it was marked too).
            if sender.notify(index) { inboxWakesByMessageRing.add(1, ordering: .relaxed) }
            return
        }
        wake.signal()
    }
}
