import SocketPool
import Synchronization
import URing

/// One bounded single-producer, single-consumer byte queue: the mailbox from one ring to another.
///
/// Records are `[length: UInt32][word: UInt32][value: UInt64][bytes, padded to 16]`, always
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

    /// Whether ``push(_:value:word:)`` of `count` bytes would fit now (other producers may take the
    /// room first).
    func hasRoom(for count: Int) -> Bool {
        let size = Self.recordSize(count)
        let t = tail.load(ordering: .sequentiallyConsistent)
        let h = head.load(ordering: .sequentiallyConsistent)
        let toEnd = capacity - t % capacity
        return capacity - (t - h) >= (size <= toEnd ? size : size + toEnd)
    }

    /// Consumer: whether no record waits (one published meanwhile may be missed; none that was
    /// published before the caller's last synchronization with its producer is).
    var isEmpty: Bool { head.load(ordering: .relaxed) == tail.load(ordering: .acquiring) }

    /// Producer: appends a record; false when it does not fit now.
    func push(_ bytes: UnsafeRawBufferPointer, value: UInt64, word: UInt32 = 0) -> Bool {
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
        record.storeBytes(of: word, toByteOffset: 4, as: UInt32.self)
        record.storeBytes(of: value, toByteOffset: 8, as: UInt64.self)
        if let base = bytes.baseAddress { (record + Self.headerSize).copyMemory(from: base, byteCount: bytes.count) }
        tail.store(at + size, ordering: .releasing)
        return true
    }

    /// Consumer: hands every record published so far to `body`, then frees their space.
    func drain(_ body: (UInt64, UnsafeRawBufferPointer) throws(URingError) -> Void) throws(URingError) {
        try drainRecords { (_, value, bytes) throws(URingError) in try body(value, bytes) }
    }

    /// Consumer: hands every record published so far, with its word, to `body`, then frees their
    /// space.
    func drainRecords(_ body: (UInt32, UInt64, UnsafeRawBufferPointer) throws(URingError) -> Void) throws(URingError) {
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
            let word = record.load(fromByteOffset: 4, as: UInt32.self)
            let value = record.load(fromByteOffset: 8, as: UInt64.self)
            let bytes = UnsafeRawBufferPointer(start: record + Self.headerSize, count: Int(length))
            h += Self.recordSize(Int(length))
            try body(word, value, bytes)
        }
    }
}
