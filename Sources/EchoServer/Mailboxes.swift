import SocketPool
import Synchronization
import URing

/// The mailboxes between a server's rings: one per ordered pair, so each has one producer and one
/// consumer and needs no lock. A ring is woken for its mail by a completion that another ring posts
/// into its queue with `IORING_OP_MSG_RING` (Linux 5.18), or, without it, by an eventfd write.
///
/// Holds each ring's wake-up eventfd; the server closes them once every ring has ended
/// (``closeWakeDescriptors()``), under the lock its stops take, so a stop never writes into a
/// descriptor number reused by another file.
final class Mailboxes: Sendable {
    let count: Int
    let boxes: [Mailbox]
    /// What other threads see of each ring.
    let ports: [RingPort]
    /// Set by ``Server/stop()``: a ring woken through its eventfd checks it.
    let stopRequested = Atomic<Bool>(false)

    // Ring threads read their eventfd into these 8 bytes each; owned here because a read may stay
    // pending until its ring exits. Each ring touches only its own.
    nonisolated(unsafe) let wakeBuffers: UnsafeMutableRawPointer

    /// - Parameters:
    ///   - count: rings.
    ///   - capacity: bytes of each mailbox.
    ///   - wakeDescriptors: one eventfd per ring.
    ///   - remotes: each ring's tables for other threads (``RemoteConnections``); empty ones when
    ///     not given (tests).
    init(count: Int, capacity: Int, wakeDescriptors: [Int32], remotes: [RemoteConnections]? = nil) {
        self.count = count
        wakeBuffers = .allocate(byteCount: 8 * count, alignment: 8)
        boxes = (0..<count * count).map { _ in Mailbox(capacity: capacity) }
        let remotes =
            remotes
            ?? wakeDescriptors.map { _ in
                RemoteConnections(capacity: 1, inboxBytes: 4096, outboundBuffers: 0, outboundSize: 4096)
            }
        ports = zip(wakeDescriptors, remotes).enumerated().map { RingPort(index: $0, wakeFD: $1.0, remote: $1.1) }
    }

    deinit { wakeBuffers.deallocate() }

    /// Closes every ring's eventfd: once, after every ring has ended.
    func closeWakeDescriptors() {
        for port in ports { port.wake.close() }
    }

    func box(from: Int, to: Int) -> Mailbox { boxes[from * count + to] }

    func wakeBuffer(_ ring: Int) -> UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: wakeBuffers + 8 * ring, count: 8)
    }

    /// Wakes every ring (a stop): safe from any thread, at any time.
    func wakeAll() {
        for port in ports { port.wake.signal() }
    }

    /// Puts a message from ring `from` into the mailbox to ring `target`.
    /// - Returns: what the post did, and whether `target` must be woken for it (its first unread
    ///   message since it last drained).
    func post(_ bytes: UnsafeRawBufferPointer, value: UInt64, from: Int, to target: Int) -> (PostResult, wake: Bool) {
        guard target >= 0 && target < count, !stopRequested.load(ordering: .relaxed),
            !ports[target].exited.load(ordering: .acquiring)
        else {
            return (.noSuchRing, false)
        }
        let box = box(from: from, to: target)
        guard bytes.count <= box.capacity / 4, box.push(bytes, value: value) else { return (.full, false) }
        return (.posted, !box.notified.exchange(true, ordering: .acquiringAndReleasing))
    }
}
