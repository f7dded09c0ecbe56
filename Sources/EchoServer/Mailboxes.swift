import SocketPool
import Synchronization
import URing

/// One bounded single-producer, single-consumer byte queue: the mailbox from one ring to another.
///
/// Records are `[length: UInt32][unused: UInt32][value: UInt64][bytes, padded to 16]`, always
/// contiguous: a record that would cross the end is preceded by a skip marker. The producer owns
/// `tail`, the consumer `head`; each publishes its position with release ordering and reads the
/// other's with acquire ordering.
final class Mailbox: @unchecked Sendable {  // storage is written only below `tail` by the producer and read only below the acquired tail by the consumer
    let storage: UnsafeMutableRawPointer
    let capacity: Int
    let head = Atomic<Int>(0)
    let tail = Atomic<Int>(0)
    /// Set by the producer when it notifies the consumer, cleared by the consumer before it drains:
    /// at most one wake-up in flight per mailbox, and none lost.
    let notified = Atomic<Bool>(false)
    static let headerSize = 16
    static let skip = UInt32.max

    init(capacity: Int) {
        self.capacity = capacity
        storage = .allocate(byteCount: capacity, alignment: 16)
    }

    deinit { storage.deallocate() }

    static func recordSize(_ count: Int) -> Int { (headerSize + count + 15) & ~15 }

    /// Producer: appends a record; false when it does not fit now.
    func push(_ bytes: UnsafeRawBufferPointer, value: UInt64) -> Bool {
        let size = Self.recordSize(bytes.count)
        let t = tail.load(ordering: .relaxed)
        let h = head.load(ordering: .acquiring)
        let offset = t % capacity
        let toEnd = capacity - offset
        let needed = size <= toEnd ? size : size + toEnd
        guard capacity - (t - h) >= needed else { return false }
        var at = t
        if size > toEnd {
            storage.storeBytes(of: Self.skip, toByteOffset: offset, as: UInt32.self)
            at += toEnd
        }
        let record = storage + at % capacity
        record.storeBytes(of: UInt32(bytes.count), as: UInt32.self)
        record.storeBytes(of: value, toByteOffset: 8, as: UInt64.self)
        if let base = bytes.baseAddress { (record + Self.headerSize).copyMemory(from: base, byteCount: bytes.count) }
        tail.store(at + size, ordering: .releasing)
        return true
    }

    /// Consumer: hands every record published so far to `body`, then frees their space.
    func drain(_ body: (UInt64, UnsafeRawBufferPointer) throws(URingError) -> Void) throws(URingError) {
        var h = head.load(ordering: .relaxed)
        let t = tail.load(ordering: .acquiring)
        defer { head.store(h, ordering: .releasing) }
        while h < t {
            let offset = h % capacity
            let record = storage + offset
            let length = record.load(as: UInt32.self)
            if length == Self.skip {
                h += capacity - offset
                continue
            }
            let value = record.load(fromByteOffset: 8, as: UInt64.self)
            let bytes = UnsafeRawBufferPointer(start: record + Self.headerSize, count: Int(length))
            h += Self.recordSize(Int(length))
            try body(value, bytes)
        }
    }
}

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
    ///   - wakeDescriptors: one eventfd per ring, owned from now on.
    init(count: Int, capacity: Int, wakeDescriptors: [Int32]) {
        self.count = count
        wakeBuffers = .allocate(byteCount: 8 * count, alignment: 8)
        boxes = (0..<count * count).map { _ in Mailbox(capacity: capacity) }
        ports = wakeDescriptors.map { RingPort(wakeFD: $0) }
    }

    deinit { wakeBuffers.deallocate() }

    /// Closes every ring's eventfd: once, after every ring has ended.
    func closeWakeDescriptors() {
        for port in ports { _ = try? Sockets.close(port.wakeFD) }
    }

    func box(from: Int, to: Int) -> Mailbox { boxes[from * count + to] }

    func wakeBuffer(_ ring: Int) -> UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: wakeBuffers + 8 * ring, count: 8)
    }

    /// Wakes every ring (a stop): safe from any thread, at any time.
    func wakeAll() {
        for port in ports { try? Sockets.signalEventFD(port.wakeFD) }
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

    /// The tag of a mail notification posted into ring `to` by ring `from`.
    static func notificationTag(from: Int) -> RequestTag {
        RequestTag(index: UInt32(from), generation: 1, kind: .message)
    }

    /// The tag of the sender's own completion of a `MSG_RING` to ring `to`.
    static func sentTag(to: Int) -> RequestTag { RequestTag(index: UInt32(to), generation: 2, kind: .message) }
}

/// One ring as other threads see it: its ring descriptor (for `MSG_RING`), its wake-up eventfd,
/// whether it has exited, and a fault to inject into its next `io_uring_enter` (tests).
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

    init(wakeFD: Int32) { self.wakeFD = wakeFD }
}

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

    /// Wakes ring `target` for its mail from this ring.
    func notify(_ target: Int) {
        let fd = mailboxes.ports[target].descriptor.load(ordering: .acquiring)
        if features.contains(.messageRing) && fd >= 0 {
            do throws(URingError) {
                try ring.prepareMessage(
                    toRing: fd, result: Int32(ringIndex), targetTag: Mailboxes.notificationTag(from: ringIndex).rawValue,
                    tag: Mailboxes.sentTag(to: target).rawValue)
                return
            } catch {
                // No SQE: fall through to the eventfd.
            }
        }
        try? Sockets.signalEventFD(mailboxes.ports[target].wakeFD)
    }

    /// The sender's own `MSG_RING` completion: on failure (a kernel that refuses it, a target that
    /// is gone), fall back to the eventfd so the mail is not stranded.
    func onMessageSent(_ c: Completion, _ tag: RequestTag) {
        guard c.result < 0 else { return }
        stats.messageRingFailures &+= 1
        if c.error == .invalidArgument || c.error == .notSupported {
            logger.notice("MSG_RING refused (\(c.error!)); rings wake each other through eventfds")
            features.remove(.messageRing)
        }
        let target = Int(tag.index)
        if target < mailboxes.count { try? Sockets.signalEventFD(mailboxes.ports[target].wakeFD) }
    }
}
