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
final class Mailboxes: Sendable {
    let count: Int
    let boxes: [Mailbox]
    /// Each ring's fd, published once the ring exists (-1 before and after).
    let ringDescriptors: [RingDescriptor]
    /// Each ring's eventfd: the fallback wake-up, and the stop signal.
    let wakeDescriptors: [Int32]
    /// Set by ``Server/stop()``: a ring woken through its eventfd checks it.
    let stopRequested = Atomic<Bool>(false)
    /// Faults to inject into each ring's next `io_uring_enter` (tests), read on its wake-up.
    let injectedFaults: [RingDescriptor]

    // Ring threads read their eventfd into these 8 bytes each; owned here because a read may stay
    // pending until its ring exits. Each ring touches only its own.
    nonisolated(unsafe) let wakeBuffers: UnsafeMutableRawPointer

    init(count: Int, capacity: Int, wakeDescriptors: [Int32]) {
        self.count = count
        wakeBuffers = .allocate(byteCount: 8 * count, alignment: 8)
        boxes = (0..<count * count).map { _ in Mailbox(capacity: capacity) }
        ringDescriptors = (0..<count).map { _ in RingDescriptor() }
        injectedFaults = (0..<count).map { _ in RingDescriptor(0) }
        self.wakeDescriptors = wakeDescriptors
    }

    deinit { wakeBuffers.deallocate() }

    func box(from: Int, to: Int) -> Mailbox { boxes[from * count + to] }

    func wakeBuffer(_ ring: Int) -> UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: wakeBuffers + 8 * ring, count: 8)
    }

    /// The tag of a mail notification posted into ring `to` by ring `from`.
    static func notificationTag(from: Int) -> RequestTag {
        RequestTag(index: UInt32(from), generation: 1, kind: .message)
    }

    /// The tag of the sender's own completion of a `MSG_RING` to ring `to`.
    static func sentTag(to: Int) -> RequestTag { RequestTag(index: UInt32(to), generation: 2, kind: .message) }
}

/// A ring's fd as other rings see it.
final class RingDescriptor: Sendable {
    let value: Atomic<Int32>
    init(_ value: Int32 = -1) { self.value = Atomic(value) }
}

extension LoopCore {
    /// ``RingContext/post(_:value:toRing:)``.
    func post(_ bytes: UnsafeRawBufferPointer, value: UInt64, to target: Int) -> PostResult {
        guard target >= 0 && target < mailboxes.count, !mailboxes.stopRequested.load(ordering: .relaxed) else {
            return .noSuchRing
        }
        let box = mailboxes.box(from: ringIndex, to: target)
        guard bytes.count <= box.capacity / 4 else {
            stats.postsRefused &+= 1
            return .full
        }
        guard box.push(bytes, value: value) else {
            stats.postsRefused &+= 1
            return .full
        }
        stats.posted &+= 1
        if !box.notified.exchange(true, ordering: .acquiringAndReleasing) { notify(target) }
        return .posted
    }

    /// Wakes ring `target` for its mail from this ring.
    func notify(_ target: Int) {
        let fd = mailboxes.ringDescriptors[target].value.load(ordering: .acquiring)
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
        try? Sockets.signalEventFD(mailboxes.wakeDescriptors[target])
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
        if target < mailboxes.count { try? Sockets.signalEventFD(mailboxes.wakeDescriptors[target]) }
    }
}
