import SocketPool
import Synchronization
import URing

extension LoopCore {
    /// ``RingContext/post(_:value:toRing:)``.
    func post(_ bytes: UnsafeRawBufferPointer, value: UInt64, to target: Int) -> PostResult {
        let (result, wake) = mailboxes.post(bytes, value: value, from: ringIndex, to: target)
        switch result {
        case .posted: stats.posted &+= 1
        case .full: stats.postsRefused &+= 1
        case .noSuchRing: break
        }
        if wake { notify(target) }
        return result
    }

    /// The sender's own `MSG_RING` completion: on failure (a kernel that refuses it, a target that
    /// is gone), fall back to the eventfd so the mail is not stranded.
    func onMessageSent(_ c: Completion, to target: Int) {
        guard c.result < 0 else { return }
        stats.messageRingFailures &+= 1
        if c.error == .invalidArgument || c.error == .notSupported {
            fallBack(from: .messageRing, "MSG_RING refused (\(c.error!)); rings wake each other through eventfds")
        }
        if target < mailboxes.count { mailboxes.ports[target].wake.signal() }
    }
}
