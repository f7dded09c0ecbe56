import Synchronization
import URing

/// What threads other than a ring's may know and reserve of its connections: the ring's side of
/// ``ConnectionHandle``, and the accounts of its outbound buffers, which every write (local or
/// remote) reserves from.
///
/// - **Epochs.** Each session's current connection (0: none), published by the ring when it
///   accepts and recycles one: a handle whose epoch is not the current one gets `.closed`.
/// - **Room.** The bytes writers on other threads may still have on their way to or queued on
///   each connection (``ServerConfiguration/maxOutputBytesPerConnection`` at first): a writer
///   reserves its bytes here before they go into the inbox, and the ring gives them back as they
///   are sent. One atomic word per session holds the room *and* the connection it belongs to (a
///   tag of its epoch), so a writer whose connection has closed can neither take the next
///   connection's room nor give its own back to it.
/// - **Outbound buffers, shared fairly.** Each session may hold ``guaranteed`` buffers whatever
///   the others do (the ring has that many for every session); beyond them a connection takes
///   buffers from a shared pool, but never so many that fewer would stay free than it holds of it
///   (a dynamic threshold: with `n` connections that do not drain, each ends with about
///   `1/(n+1)` of the pool, and as much stays free for the others). Charged per session, so a
///   reservation made for a connection that closed meanwhile goes back to the same account.
/// - **Inbox.** The bytes themselves, and close, abort and shutdown requests: one bounded queue per
///   ring, many producers (a short lock among them), one consumer (the ring), one wake-up per
///   batch. A close that finds the inbox full is not lost or waited for: it is kept in the
///   session's request word (``requests``), taken by the ring before its next drain and applied
///   after it, so it still follows every record its caller pushed before.
/// - **Pending records.** Per session, the inbox records for it not yet drained: while a session
///   has any, an operation asked on the ring's own thread goes behind them (``LoopCore``), so it
///   keeps its place after what its caller pushed before.
/// - **Waiters.** Async writers that found no room or no buffers: resumed when their connection
///   gets room or buffers back (its own session's list), or, for one that waits on the shared pool
///   or the inbox, after a ring turn that freed some of either (the shared list, woken only then),
///   or when their task is cancelled.
final class RemoteConnections: @unchecked Sendable {  // the tables are atomics; `waiters` is guarded by its lock; the inbox's producers hold `producers`
    let capacity: Int
    let epochs: UnsafeMutablePointer<Atomic<UInt64>>
    /// Per session: its connection's epoch tag (high ``tagBits``) and room (low ``roomBits``).
    let room: UnsafeMutablePointer<Atomic<UInt64>>
    /// Per session: outbound buffers its queue holds or writes on their way have reserved.
    let held: UnsafeMutablePointer<Atomic<Int>>
    /// Per session: close, abort and shutdown requests that found the inbox full (epoch tag high,
    /// ``Operation`` bits low).
    let requests: UnsafeMutablePointer<Atomic<UInt64>>
    /// Set when a session's request word was written: the ring takes them before its next drain.
    let requestsPending = Atomic<Bool>(false)
    /// Per session: inbox records for it pushed and not yet drained.
    let pendingRecords: UnsafeMutablePointer<Atomic<Int32>>
    /// Buffers each session may hold without taking from the shared pool.
    let guaranteed: Int
    /// The shared pool: its size, and how many of its buffers are free.
    let sharedTotal: Int
    let sharedFree: Atomic<Int>
    let outboundSize: Int
    /// The room a connection starts with.
    let maxRoom: Int
    /// The largest write that can ever go through: the room, the guaranteed buffers, and a quarter
    /// of the inbox (a record never wraps, so a larger one might never fit).
    let largestWrite: Int
    let inbox: Mailbox
    let producers = PthreadMutex()
    let waiters = PthreadLock(Waiters())
    /// Writers waiting now, over all sessions (at a stable address of its own, so that
    /// ``RemoteTables`` reads it), and those of them that also wait for the shared pool or the
    /// inbox: the ring looks at them after returning room or buffers, and after a turn that freed
    /// shared buffers or inbox space.
    let waitingCount: UnsafeMutablePointer<Atomic<Int>>
    let waitingShared = Atomic<Int>(0)
    /// The per-session tables as plain pointers, for the loop (``RemoteTables``).
    var tables: RemoteTables {
        RemoteTables(epochs: epochs, room: room, requests: requests, pendingRecords: pendingRecords, waiting: waitingCount)
    }

    /// Async writers waiting: each under a token (to find it again on cancellation), listed under
    /// its session, and also in ``shared`` when it waits for the shared pool or the inbox. A
    /// waiter is resumed once: whichever list wakes it first takes it out of ``entries``.
    struct Waiters {
        var entries: [UInt64: UnsafeContinuation<Void, Never>] = [:]
        var bySession: [Int: [UInt64]] = [:]
        var shared: [UInt64] = []
        var nextToken: UInt64 = 0

        /// Takes the continuations of `tokens` still waiting.
        mutating func take(_ tokens: [UInt64]) -> [UnsafeContinuation<Void, Never>] {
            tokens.compactMap { entries.removeValue(forKey: $0) }
        }
    }

    /// Operations an inbox record carries (the top byte of its value; the epoch below), and the
    /// bits of a session's request word.
    enum Operation: UInt64 {
        case write = 1
        case close = 2
        case abort = 3
        case shutdown = 4

        /// Its bit in a request word (a write is never kept there).
        var bit: UInt64 {
            switch self {
            case .write: 0
            case .close: 1
            case .abort: 2
            case .shutdown: 4
            }
        }
    }

    static let roomBits: UInt64 = 41
    static let roomMask: UInt64 = 1 << roomBits - 1
    static let tagBits: UInt64 = 23

    /// A connection's tag in the room and request words: never 0 (0 means closed).
    @inline(__always)
    static func tag(_ epoch: UInt64) -> UInt64 { epoch % (1 << tagBits - 1) + 1 }

    /// - Parameters:
    ///   - capacity: sessions.
    ///   - inboxBytes: the inbox's size.
    ///   - outboundBuffers: the shared pool of outbound buffers.
    ///   - outboundSize: bytes per outbound buffer.
    ///   - maxOutput: the room a connection starts with (at most 2^40).
    ///   - guaranteedBuffers: outbound buffers each session may hold beyond the shared pool.
    init(
        capacity: Int, inboxBytes: Int, outboundBuffers: Int, outboundSize: Int, maxOutput: Int = 1 << 20,
        guaranteedBuffers: Int = 16
    ) {
        self.capacity = capacity
        epochs = .allocate(capacity: capacity)
        room = .allocate(capacity: capacity)
        held = .allocate(capacity: capacity)
        requests = .allocate(capacity: capacity)
        pendingRecords = .allocate(capacity: capacity)
        waitingCount = .allocate(capacity: 1)
        waitingCount.initialize(to: Atomic(0))
        for i in 0..<capacity {
            (epochs + i).initialize(to: Atomic(0))
            (room + i).initialize(to: Atomic(0))
            (held + i).initialize(to: Atomic(0))
            (requests + i).initialize(to: Atomic(0))
            (pendingRecords + i).initialize(to: Atomic(0))
        }
        guaranteed = max(guaranteedBuffers, 0)
        sharedTotal = max(outboundBuffers, 0)
        sharedFree = Atomic(sharedTotal)
        self.outboundSize = max(outboundSize, 1)
        maxRoom = maxOutput
        inbox = Mailbox(capacity: inboxBytes)
        largestWrite = min(maxOutput, guaranteed * self.outboundSize, inboxBytes / 4)
    }

    deinit {
        epochs.deinitialize(count: capacity)
        room.deinitialize(count: capacity)
        held.deinitialize(count: capacity)
        requests.deinitialize(count: capacity)
        pendingRecords.deinitialize(count: capacity)
        waitingCount.deinitialize(count: 1)
        waitingCount.deallocate()
        epochs.deallocate()
        room.deallocate()
        held.deallocate()
        requests.deallocate()
        pendingRecords.deallocate()
    }

    /// Every outbound buffer the ring needs: each session's guarantee and the shared pool.
    var totalBuffers: Int { capacity * guaranteed + sharedTotal }

    // MARK: Outbound buffers

    /// Outbound buffers `count` bytes may take: the room of a partly filled last buffer is not
    /// counted on, so every write can take a fresh one.
    @inline(__always)
    func buffers(for count: Int) -> Int { (count + outboundSize - 1) / outboundSize }

    /// Reserves `n` outbound buffers for session `index`: from its guarantee while it lasts, then
    /// from the shared pool, as long as the session's share of it would not pass what stays free.
    /// - Returns: false (nothing reserved) when they cannot be had now.
    @inline(__always)
    func reserveBuffers(_ index: Int, _ n: Int) -> Bool {
        guard n > 0 else { return true }
        var h = held[index].load(ordering: .relaxed)
        while true {
            let shared = max(0, h + n - guaranteed) - max(0, h - guaranteed)
            if shared > 0 && !takeShared(shared, holding: max(0, h + n - guaranteed)) { return false }
            let (exchanged, original) = held[index].compareExchange(
                expected: h, desired: h + n, ordering: .acquiringAndReleasing)
            if exchanged { return true }
            if shared > 0 {
                // Taken for a moment and given back: a writer that looked meanwhile may be waiting.
                sharedFree.add(shared, ordering: .sequentiallyConsistent)
                wakeSharedWriters()
            }
            h = original
        }
    }

    /// Takes `n` buffers of the shared pool for a connection that would then hold `holding` of it.
    @inline(__always)
    private func takeShared(_ n: Int, holding: Int) -> Bool {
        var free = sharedFree.load(ordering: .relaxed)
        while free - n >= holding {
            let (exchanged, original) = sharedFree.compareExchange(
                expected: free, desired: free - n, ordering: .acquiringAndReleasing)
            if exchanged { return true }
            free = original
        }
        return false
    }

    /// Gives `n` of session `index`'s buffers back (sent, dropped, or reserved and not needed).
    /// - Returns: whether shared buffers came free (waiters on other sessions may go on).
    @inline(__always)
    @discardableResult
    func releaseBuffers(_ index: Int, _ n: Int) -> Bool {
        guard n > 0 else { return false }
        // Sequentially consistent, as the waiters' readiness check (``couldReserveBuffers(_:_:)``)
        // and their count that ``wakeWriters(_:)`` reads after this.
        let before = held[index].wrappingSubtract(n, ordering: .sequentiallyConsistent).oldValue
        let shared = max(0, before - guaranteed) - max(0, before - n - guaranteed)
        if shared > 0 { sharedFree.add(shared, ordering: .sequentiallyConsistent) }
        return shared > 0
    }

    /// Whether `n` more buffers could be reserved for session `index` now (no reservation made).
    func couldReserveBuffers(_ index: Int, _ n: Int) -> Bool {
        let h = held[index].load(ordering: .sequentiallyConsistent)
        let shared = max(0, h + n - guaranteed) - max(0, h - guaranteed)
        return shared == 0 || sharedFree.load(ordering: .sequentiallyConsistent) - shared >= max(0, h + n - guaranteed)
    }

    // MARK: Room

    /// Reserves `n` bytes of the room of connection `epoch` at `index`; false when it has less, or
    /// the session's connection is no longer that one.
    func reserveRoom(_ index: Int, _ n: Int, epoch: UInt64) -> Bool {
        let tag = Self.tag(epoch)
        var word = room[index].load(ordering: .relaxed)
        while word >> Self.roomBits == tag && word & Self.roomMask >= UInt64(n) {
            let (exchanged, original) = room[index].compareExchange(
                expected: word, desired: word - UInt64(n), ordering: .acquiringAndReleasing)
            if exchanged { return true }
            word = original
        }
        return false
    }

    /// Gives `n` bytes of room back to connection `epoch` at `index` (none if the session's
    /// connection is another one by now: it started with its room whole) and wakes its writers.
    func returnRoom(_ index: Int, _ n: Int, epoch: UInt64) {
        let tag = Self.tag(epoch)
        var word = room[index].load(ordering: .relaxed)
        while word >> Self.roomBits == tag {
            // Sequentially consistent with the waiter's registration and readiness check
            // (``wait(_:ready:)``): either the waiter sees this room, or this sees it waiting.
            let (exchanged, original) = room[index].compareExchange(
                expected: word, desired: word + UInt64(n), ordering: .sequentiallyConsistent)
            if exchanged {
                wakeWriters(index)
                return
            }
            word = original
        }
    }

    /// The room left to connection `epoch` at `index`: 0 once the session's connection is another.
    func roomLeft(_ index: Int, epoch: UInt64) -> Int {
        let word = room[index].load(ordering: .sequentiallyConsistent)
        return word >> Self.roomBits == Self.tag(epoch) ? Int(word & Self.roomMask) : 0
    }

    /// The ring accepted `epoch` at `index`: its writers start with `maxOutput` bytes of room.
    func opened(_ index: Int, epoch: UInt64, maxOutput: Int) { tables.opened(index, epoch: epoch, maxOutput: maxOutput) }

    /// The ring closed the connection at `index`: its handles get `.closed` from now on.
    func closed(_ index: Int) {
        if tables.closed(index) { wakeWriters(index) }
    }

    // MARK: Waiters

    /// Wakes the async writers waiting on `index` (room or buffers came back, or the connection
    /// ended).
    func wakeWriters(_ index: Int) {
        guard waitingCount.pointee.load(ordering: .sequentiallyConsistent) > 0 else { return }
        let woken = waiters.withLock { table -> [UnsafeContinuation<Void, Never>] in
            guard let tokens = table.bySession.removeValue(forKey: index) else { return [] }
            return table.take(tokens)
        }
        resume(woken)
    }

    /// Wakes the writers waiting for the shared pool or the inbox: after a ring turn that freed
    /// shared buffers or inbox space (a load when none waits).
    func wakeSharedWriters() {
        // A fence: the space just freed (the inbox's head is a releasing store) is ordered before
        // this load, as a waiter's count is before its readiness check.
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        guard waitingShared.load(ordering: .sequentiallyConsistent) > 0 else { return }
        let woken = waiters.withLock { table -> [UnsafeContinuation<Void, Never>] in
            defer { table.shared.removeAll(keepingCapacity: true) }
            return table.take(table.shared)
        }
        resume(woken)
    }

    private func resume(_ woken: [UnsafeContinuation<Void, Never>]) {
        guard !woken.isEmpty else { return }
        waitingCount.pointee.subtract(woken.count, ordering: .relaxed)
        for continuation in woken { continuation.resume() }
    }

    /// Waits until `index` may have room and buffers for another try (or its connection ended, or
    /// the task is cancelled). Returns at once if `ready()` already holds once the waiter is
    /// registered: no wake-up is lost between a failed reservation and the wait.
    /// - Parameters:
    ///   - shared: whether it also waits for the shared pool or the inbox (then woken also after a
    ///     ring turn that freed either).
    ///   - ready: whether another try may succeed; read with sequentially consistent loads.
    func wait(_ index: Int, shared: Bool, ready: () -> Bool) async {
        let token = waiters.withLock { table -> UInt64 in
            table.nextToken &+= 1
            return table.nextToken
        }
        await withTaskCancellationHandler {
            await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
                let registered = waiters.withLock { table -> Bool in
                    waitingCount.pointee.add(1, ordering: .sequentiallyConsistent)
                    if shared { waitingShared.add(1, ordering: .sequentiallyConsistent) }
                    if ready() || Task.isCancelled {
                        waitingCount.pointee.subtract(1, ordering: .relaxed)
                        if shared { waitingShared.subtract(1, ordering: .relaxed) }
                        return false
                    }
                    table.entries[token] = continuation
                    table.bySession[index, default: []].append(token)
                    if shared { table.shared.append(token) }
                    return true
                }
                if !registered { continuation.resume() }
            }
        } onCancel: {
            let found = waiters.withLock { table in table.entries.removeValue(forKey: token) }
            if let found {
                waitingCount.pointee.subtract(1, ordering: .relaxed)
                found.resume()
            }
        }
        if shared { waitingShared.subtract(1, ordering: .relaxed) }
    }

    // MARK: Inbox

    /// The word of an inbox record that is a message for the ring's handler (``RingHandle/post(_:value:)-(UnsafeRawBufferPointer,_)``),
    /// not an operation on a connection: its value is the poster's.
    static let messageWord = UInt32.max

    /// Pushes a message for the ring's handler; false when it does not fit now (or ever: larger
    /// than a quarter of the inbox).
    func pushMessage(_ bytes: UnsafeRawBufferPointer, value: UInt64) -> Bool {
        guard bytes.count <= inbox.capacity / 4 else { return false }
        return producers.withLock { inbox.push(bytes, value: value, word: Self.messageWord) }
    }

    /// Pushes a record for `index`/`epoch` into the inbox, counted in the session's pending
    /// records until the ring drains it; false when it is full.
    func push(_ operation: Operation, _ index: Int, _ epoch: UInt64, _ bytes: UnsafeRawBufferPointer) -> Bool {
        // Counted first: the ring, which acquires the record, then sees the count, and a caller
        // that pushed sees its own count afterwards.
        pendingRecords[index].add(1, ordering: .relaxed)
        let pushed = producers.withLock {
            inbox.push(bytes, value: epoch | operation.rawValue << 56, word: UInt32(index))
        }
        if !pushed { pendingRecords[index].subtract(1, ordering: .relaxed) }
        return pushed
    }

    /// Keeps a close, abort or shutdown of connection `epoch` at `index` in the session's request
    /// word, for a caller that found the inbox full: never waits. A request for a connection that
    /// has closed is dropped.
    func keep(_ operation: Operation, _ index: Int, epoch: UInt64) {
        let tag = Self.tag(epoch)
        var word = requests[index].load(ordering: .relaxed)
        while true {
            guard epochs[index].load(ordering: .acquiring) == epoch else { return }
            let desired = word >> Self.roomBits == tag ? word | operation.bit : tag << Self.roomBits | operation.bit
            // Releasing: the ring, which takes the word with acquiring ordering before its drain,
            // then sees every record this caller pushed before.
            let (exchanged, original) = requests[index].compareExchange(
                expected: word, desired: desired, ordering: .acquiringAndReleasing)
            if exchanged { break }
            word = original
        }
        requestsPending.store(true, ordering: .releasing)
    }

    /// The ring: takes every kept request (each session's word, cleared), oldest drain first.
    func takeRequests(_ body: (_ index: Int, _ tag: UInt64, _ bits: UInt64) -> Void) {
        guard requestsPending.exchange(false, ordering: .acquiringAndReleasing) else { return }
        for index in 0..<capacity where requests[index].load(ordering: .relaxed) != 0 {
            let word = requests[index].exchange(0, ordering: .acquiringAndReleasing)
            if word != 0 { body(index, word >> Self.roomBits, word & Self.roomMask) }
        }
    }
}

/// The per-session tables of ``RemoteConnections`` the loop writes once per connection (its epoch,
/// room and request word as it opens and closes), as plain pointers: reading them through the
/// object would retain it around every call that is not inlined (measured once per accepted and
/// per closed connection). Valid while the object lives: the ring's port owns it, and outlives the
/// ring.
struct RemoteTables {
    let epochs: UnsafeMutablePointer<Atomic<UInt64>>
    let room: UnsafeMutablePointer<Atomic<UInt64>>
    let requests: UnsafeMutablePointer<Atomic<UInt64>>
    let pendingRecords: UnsafeMutablePointer<Atomic<Int32>>
    let waiting: UnsafeMutablePointer<Atomic<Int>>

    /// Connection `epoch` opened at `index`: its writers start with `maxOutput` bytes of room.
    @inline(__always)
    func opened(_ index: Int, epoch: UInt64, maxOutput: Int) {
        requests[index].store(0, ordering: .relaxed)
        room[index].store(
            RemoteConnections.tag(epoch) << RemoteConnections.roomBits | UInt64(maxOutput), ordering: .relaxed)
        epochs[index].store(epoch, ordering: .releasing)
    }

    /// The connection at `index` closed: its handles get `.closed` from now on.
    /// - Returns: whether writers wait (the caller wakes those of `index`).
    @inline(__always)
    func closed(_ index: Int) -> Bool {
        epochs[index].store(0, ordering: .sequentiallyConsistent)
        room[index].store(0, ordering: .sequentiallyConsistent)
        return waiting.pointee.load(ordering: .sequentiallyConsistent) > 0
    }
}
