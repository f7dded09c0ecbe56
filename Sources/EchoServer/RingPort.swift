import SocketPool
import Synchronization
import URing

/// One ring as other threads see it: its ring descriptor (for `MSG_RING`), its wake-up eventfd,
/// the executor its tasks run on, whether it has exited, and a fault to inject into its next
/// `io_uring_enter` (tests).
final class RingPort: Sendable {
    /// The ring's fd, published once the ring exists (-1 before). It stays open until every ring of
    /// the server has exited, so a `MSG_RING` never reaches a reused descriptor number.
    let descriptor = Atomic<Int32>(-1)
    /// The fallback wake-up, and the stop signal.
    let wakeFD: Int32
    /// Set when the ring's loop has ended (stopped or failed): posts to it are refused.
    let exited = Atomic<Bool>(false)
    /// An errno to inject into the ring's next `io_uring_enter`, read on its wake-up (tests).
    let injectedFault = Atomic<Int32>(0)

    /// The ring's thread as a task executor (``RingExecutor``).
    let executor: RingExecutor
    /// What other threads may know and reserve of the ring's connections, and its inbox.
    let remote: RemoteConnections

    init(wakeFD: Int32, remote: RemoteConnections) {
        self.wakeFD = wakeFD
        self.remote = remote
        executor = RingExecutor(wakeFD: wakeFD)
    }

    /// Marks the inbox as holding records and wakes the ring for it, once per batch (the ring,
    /// which looks at the mark every turn, clears it before it drains; its own thread needs no
    /// wake-up).
    func wakeForInbox() {
        guard !remote.inbox.notified.exchange(true, ordering: .acquiringAndReleasing), !executor.isCurrent else {
            return
        }
        try? Sockets.signalEventFD(wakeFD)
    }
}
