import Glibc
import URing

/// Reusable outgoing TCP sockets: the Linux form of IOCP's `DisconnectEx(TF_REUSE_SOCKET)`.
///
/// After an exchange, ``prepareDisconnect(_:on:tag:)`` submits `connect(AF_UNSPEC)` through the
/// ring; once it completes the same descriptor is ``release(_:)``d to the pool and handed out again
/// by ``acquire()`` for the next `connect`. One `socket(2)` serves any number of connections.
///
/// **This disconnect is abortive.** `connect(AF_UNSPEC)` runs `tcp_disconnect`: unsent data is
/// dropped and the peer receives a RST (its next read fails with `ECONNRESET`), so neither side
/// keeps the connection in TIME_WAIT. That is acceptable when the application protocol has already
/// confirmed that every byte arrived — a request/response exchange whose response was fully read,
/// as a load generator or a connection-per-request client does — and the peer treats a reset after
/// a complete exchange as a normal end. It is not acceptable where the peer must see an orderly FIN
/// (it may log or count the reset as an error) or where data may still be in flight: there, shut
/// down, read to EOF and close, and pay for the TIME_WAIT.
///
/// Confined to one thread: not `Sendable`, no locks.
public struct ClientSocketPool: ~Copyable {
    let free: UnsafeMutablePointer<Int32>
    var freeCount: Int
    /// The most idle sockets kept for reuse.
    public let capacity: Int
    /// `AF_INET` or `AF_INET6`.
    public let family: Int32
    /// When `false`, ``release(_:)`` closes the socket and ``acquire()`` always creates one: the
    /// unpooled comparison.
    public let reuse: Bool
    /// Counters: hits are acquisitions served by a reused socket, misses those that had to create one.
    public private(set) var statistics = PoolStatistics()
    /// Calls to `socket(2)` made by this pool.
    public private(set) var socketsCreated: UInt64 = 0
    /// Sockets closed because a disconnect failed, the pool was full, or reuse is off.
    public private(set) var socketsClosed: UInt64 = 0

    /// Creates an empty pool.
    /// - Parameters:
    ///   - capacity: idle sockets kept at most.
    ///   - family: address family of the sockets.
    ///   - reuse: reuse sockets (`true`) or create and close one per connection.
    public init(capacity: Int, family: Int32 = AF_INET, reuse: Bool = true) {
        precondition(capacity > 0)
        self.capacity = capacity
        self.family = family
        self.reuse = reuse
        free = .allocate(capacity: capacity)
        freeCount = 0
        statistics.capacity = capacity
    }

    deinit {
        for i in 0..<freeCount { _ = try? Sockets.close(free[i]) }
        free.deallocate()
    }

    /// A socket ready to connect: a disconnected one from the pool, or a new one.
    /// - Returns: the descriptor.
    /// - Throws: `URingError` for `socket` (for example `EMFILE`).
    public mutating func acquire() throws(URingError) -> Int32 {
        if freeCount > 0 {
            freeCount -= 1
            statistics.noteAcquire()
            return free[freeCount]
        }
        let fd = try Sockets.makeTCP(family: family)
        socketsCreated &+= 1
        statistics.misses &+= 1
        statistics.noteInUse()
        return fd
    }

    /// Prepares the disconnect of `fd` (`connect(AF_UNSPEC)` as a ring request). Once its
    /// completion reports 0, pass `fd` to ``release(_:)``; on an error, to ``discard(_:)``.
    /// - Parameters:
    ///   - fd: a socket from ``acquire()`` whose exchange is finished.
    ///   - ring: the ring to submit on.
    ///   - tag: the request's `user_data`.
    /// - Throws: `URingError` if no SQE could be had.
    public func prepareDisconnect(_ fd: Int32, on ring: borrowing Ring, tag: UInt64) throws(URingError) {
        try ring.prepareConnect(.fd(fd), to: .unspecified, tag: tag)
    }

    /// Returns a disconnected socket for reuse (or closes it when reuse is off or the pool is full).
    /// - Parameter fd: a socket whose disconnect completed.
    public mutating func release(_ fd: Int32) {
        statistics.inUse -= 1
        if reuse && freeCount < capacity {
            free[freeCount] = fd
            freeCount += 1
        } else {
            _ = try? Sockets.close(fd)
            socketsClosed &+= 1
        }
    }

    /// Closes a socket that cannot be reused (its connect or disconnect failed).
    /// - Parameter fd: a socket from ``acquire()``.
    public mutating func discard(_ fd: Int32) {
        statistics.inUse -= 1
        _ = try? Sockets.close(fd)
        socketsClosed &+= 1
    }

    /// Idle sockets waiting for reuse.
    public var idle: Int { freeCount }
}
