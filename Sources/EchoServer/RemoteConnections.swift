import Synchronization
import URing

/// What threads other than a ring's may know and reserve of its connections: the ring's side of
/// ``ConnectionHandle``.
///
/// - **Epochs.** Each session's current connection (0: none), published by the ring when it
///   accepts and recycles one: a handle whose epoch is not the current one gets `.closed`.
/// - **Room.** The bytes writers on other threads may still have on their way to or queued on
///   each connection (``ServerConfiguration/maxOutputBytesPerConnection`` at first); a writer
///   reserves its bytes here before they go into the inbox, and the ring gives them back as they
///   are sent: the output bound a remote write meets.
/// - **Outbound buffers.** The ring's outbound buffers free to take, reserved the same way by
///   every write, local or remote, so a reserved write always finds its buffers.
/// - **Inbox.** The bytes themselves, and close and abort requests: one bounded queue per ring,
///   many producers (a short lock among them), one consumer (the ring), one wake-up per batch.
/// - **Waiters.** Async writers that found no room, resumed when room comes back.
final class RemoteConnections: @unchecked Sendable {  // the tables are atomics; `waiters` is guarded by its lock; the inbox's producers hold `producers`
    let capacity: Int
    let epochs: UnsafeMutablePointer<Atomic<UInt64>>
    let room: UnsafeMutablePointer<Atomic<Int>>
    let hasWaiters: UnsafeMutablePointer<Atomic<Bool>>
    let outboundFree: Atomic<Int>
    let outboundSize: Int
    /// The room a connection starts with.
    let maxRoom: Int
    /// The largest write that can ever go through: the room, all the outbound buffers, and a
    /// quarter of the inbox (a record never wraps, so a larger one might never fit).
    let largestWrite: Int
    let inbox: Mailbox
    let producers = PthreadMutex()
    let waiters = PthreadLock<[Int: [UnsafeContinuation<Void, Never>]]>([:])

    /// Operations an inbox record carries (the top byte of its value; the epoch below).
    enum Operation: UInt64 {
        case write = 1
        case close = 2
        case abort = 3
        case shutdown = 4
    }

    init(capacity: Int, inboxBytes: Int, outboundBuffers: Int, outboundSize: Int, maxOutput: Int = 1 << 20) {
        self.capacity = capacity
        epochs = .allocate(capacity: capacity)
        room = .allocate(capacity: capacity)
        hasWaiters = .allocate(capacity: capacity)
        for i in 0..<capacity {
            (epochs + i).initialize(to: Atomic(0))
            (room + i).initialize(to: Atomic(0))
            (hasWaiters + i).initialize(to: Atomic(false))
        }
        outboundFree = Atomic(outboundBuffers)
        self.outboundSize = max(outboundSize, 1)
        maxRoom = maxOutput
        inbox = Mailbox(capacity: inboxBytes)
        largestWrite = min(maxOutput, outboundBuffers * self.outboundSize, inboxBytes / 4)
    }

    deinit {
        epochs.deinitialize(count: capacity)
        room.deinitialize(count: capacity)
        hasWaiters.deinitialize(count: capacity)
        epochs.deallocate()
        room.deallocate()
        hasWaiters.deallocate()
    }

    /// Outbound buffers `count` bytes may take: the room of a partly filled last buffer is not
    /// counted on, so every write can take a fresh one.
    @inline(__always)
    func buffers(for count: Int) -> Int { (count + outboundSize - 1) / outboundSize }

    /// Reserves `n` outbound buffers; false (nothing reserved) when fewer are free.
    @inline(__always)
    func reserveBuffers(_ n: Int) -> Bool {
        guard n > 0 else { return true }
        var free = outboundFree.load(ordering: .relaxed)
        while free >= n {
            let (exchanged, original) = outboundFree.compareExchange(
                expected: free, desired: free - n, ordering: .acquiringAndReleasing)
            if exchanged { return true }
            free = original
        }
        return false
    }

    @inline(__always)
    func returnBuffers(_ n: Int) { if n > 0 { outboundFree.add(n, ordering: .releasing) } }

    /// Reserves `n` bytes of a connection's room; false when it has less.
    func reserveRoom(_ index: Int, _ n: Int) -> Bool {
        var left = room[index].load(ordering: .relaxed)
        while left >= n {
            let (exchanged, original) = room[index].compareExchange(
                expected: left, desired: left - n, ordering: .acquiringAndReleasing)
            if exchanged { return true }
            left = original
        }
        return false
    }

    /// Gives `n` bytes of room back to a connection and wakes its waiting writers.
    func returnRoom(_ index: Int, _ n: Int) {
        // Sequentially consistent with the waiter's flag store and room load (waitForRoom): either
        // the waiter sees this room, or this sees its flag.
        room[index].add(n, ordering: .sequentiallyConsistent)
        wakeWriters(index)
    }

    /// Gives back the room of a write dropped because its connection `epoch` has closed: only while
    /// the session has not been reopened, whose room starts full again.
    func returnRoom(_ index: Int, _ n: Int, epoch: UInt64) {
        guard epochs[index].load(ordering: .acquiring) == epoch else { return }
        returnRoom(index, n)
    }

    /// Wakes the async writers waiting on `index` (room came back, or the connection ended).
    func wakeWriters(_ index: Int) {
        guard hasWaiters[index].load(ordering: .sequentiallyConsistent) else { return }
        let woken = waiters.withLock { table -> [UnsafeContinuation<Void, Never>] in
            hasWaiters[index].store(false, ordering: .releasing)
            return table.removeValue(forKey: index) ?? []
        }
        for continuation in woken { continuation.resume() }
    }

    /// Waits until `index` may have room for another try (or its connection ended). Returns at
    /// once if `ready()` already holds once the waiter is registered: no wake-up is lost between a
    /// failed reservation and the wait.
    func waitForRoom(_ index: Int, ready: () -> Bool) async {
        await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
            let registered = waiters.withLock { table -> Bool in
                hasWaiters[index].store(true, ordering: .sequentiallyConsistent)
                if ready() { return false }
                table[index, default: []].append(continuation)
                return true
            }
            if !registered { continuation.resume() }
        }
    }

    /// The ring accepted `epoch` at `index`: its writers start with `maxOutput` bytes of room.
    func opened(_ index: Int, epoch: UInt64, maxOutput: Int) {
        room[index].store(maxOutput, ordering: .relaxed)
        epochs[index].store(epoch, ordering: .releasing)
    }

    /// The ring closed the connection at `index`: its handles get `.closed` from now on.
    func closed(_ index: Int) {
        epochs[index].store(0, ordering: .sequentiallyConsistent)
        wakeWriters(index)
    }

    /// Pushes a record for `index`/`epoch` into the inbox; false when it is full.
    /// The word of an inbox record that is a message for the ring's handler (``RingHandle/post(_:value:)-(UnsafeRawBufferPointer,_)``),
    /// not an operation on a connection: its value is the poster's.
    static let messageWord = UInt32.max

    /// Pushes a message for the ring's handler; false when it does not fit now (or ever: larger
    /// than a quarter of the inbox).
    func pushMessage(_ bytes: UnsafeRawBufferPointer, value: UInt64) -> Bool {
        guard bytes.count <= inbox.capacity / 4 else { return false }
        return producers.withLock { inbox.push(bytes, value: value, word: Self.messageWord) }
    }

    func push(_ operation: Operation, _ index: Int, _ epoch: UInt64, _ bytes: UnsafeRawBufferPointer) -> Bool {
        producers.withLock {
            inbox.push(bytes, value: epoch | operation.rawValue << 56, word: UInt32(index))
        }
    }
}
