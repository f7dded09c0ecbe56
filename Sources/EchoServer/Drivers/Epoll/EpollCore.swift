import Glibc
import Logging
import SocketPool
import SystemIO

/// The epoll driver's core: ``LoopCore`` with an epoll instance, the ring's receive buffers (one
/// pool every connection reads into: bytes stay only while a reply or a consumer holds them, so an
/// idle connection holds none), the connections with work waiting for the top of the loop, and the
/// deadlines of connects in flight. Outbound connections are non-blocking `connect`s finished by
/// writability (``connect(to:timeout:)``).
///
/// What io_uring does that readiness has no analog for, and what this does instead: no
/// registered-file slots (plain descriptors), no provided-buffer ring (this pool, taken and given
/// back in user space), no multishot requests (readiness is reported until the socket would block),
/// no `MSG_RING` (other rings wake this one through its eventfd), no linked timeouts (a deadline
/// list drives the wait's timeout).
final class EpollCore: LoopCore {
    let epoll: Epoll
    /// The receive buffers: `receiveCount` of `receiveSize` bytes at `receiveBase`, segment ids
    /// `0..<receiveCount` of the send queue, and the free ones (a LIFO stack: hot ones reused).
    let receiveBase: UnsafeMutableRawPointer
    let receiveCount: Int
    let receiveSize: Int
    let receiveFree: UnsafeMutablePointer<Int32>
    @exclusivity(unchecked) var receiveAvailable: Int
    /// Receive buffers one connection may hold (its share), as the buffer ring's.
    let maxHeldPerConnection: Int32

    /// Connections with work for the top of the loop (readable and armed, a finished connect, a
    /// writable callback due), first come first served: a linked list by session index.
    let readyNext: UnsafeMutablePointer<Int32>
    let isReady: UnsafeMutablePointer<Bool>
    @exclusivity(unchecked) var readyHead: Int32 = -1
    @exclusivity(unchecked) var readyTail: Int32 = -1
    @exclusivity(unchecked) var readyCount = 0

    /// Connects in flight: each one's deadline and its connection's tag, earliest first.
    @exclusivity(unchecked) var deadlines: [(deadline: UInt64, tag: UInt64)] = []

    /// Readiness events handled and waits made (the statistics' completions and submits).
    @exclusivity(unchecked) var events: UInt64 = 0
    @exclusivity(unchecked) var waits: UInt64 = 0

    /// Readiness bits of ``ConnectionRecord/readiness``.
    static let readable: UInt8 = 1 << 0
    static let writable: UInt8 = 1 << 1
    /// The peer shut its side (`EPOLLRDHUP`), or sent urgent data (`EPOLLPRI`): read until the
    /// socket would block, a short read does not mean drained.
    static let peerDone: UInt8 = 1 << 2
    /// A writable callback is due (the queue drained below the low-water mark).
    static let writableDue: UInt8 = 1 << 3

    init(
        configuration: ServerConfiguration, capacity: Int, mainCapacity: Int, outboundCapacity: Int,
        ringIndex: Int, mailboxes: Mailboxes, logger: Logger, listeners: RingListeners
    ) throws(SystemError) {
        epoll = try Epoll()
        receiveCount = configuration.bufferRingEntries
        receiveSize = configuration.bufferSize
        // Reserved address space: pages are touched only as buffers are used (the free list is LIFO).
        guard
            let base = mmap(
                nil, receiveCount * receiveSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1,
                0), base != MAP_FAILED
        else { throw SystemError("mmap \(receiveCount * receiveSize) bytes of receive buffers", errno: .current) }
        receiveBase = base
        receiveFree = .allocate(capacity: receiveCount)
        for i in 0..<receiveCount { receiveFree[i] = Int32(receiveCount - 1 - i) }
        receiveAvailable = receiveCount
        maxHeldPerConnection = Int32(ReceivePlan.maxHeldPerConnection(configuration))
        readyNext = .allocate(capacity: capacity)
        readyNext.initialize(repeating: -1, count: capacity)
        isReady = .allocate(capacity: capacity)
        isReady.initialize(repeating: false, count: capacity)
        try super.init(
            configuration: configuration, capacity: capacity, mainCapacity: mainCapacity,
            outboundCapacity: outboundCapacity, sharedContexts: 0, features: [],
            provided: .buffers(base: base, count: receiveCount, size: receiveSize), ringIndex: ringIndex,
            mailboxes: mailboxes, logger: logger, listeners: listeners)
        deadlines.reserveCapacity(outboundCapacity + 1)
        stats.driver = .epoll
    }

    deinit {
        munmap(receiveBase, receiveCount * receiveSize)
        receiveFree.deallocate()
        readyNext.deallocate()
        isReady.deallocate()
    }

    // MARK: Receive buffers

    /// Takes a free receive buffer, or nil when every one is held.
    @inline(__always)
    func takeReceiveBuffer() -> Int32? {
        guard receiveAvailable > 0 else { return nil }
        receiveAvailable -= 1
        return receiveFree[receiveAvailable]
    }

    /// Gives receive buffer `id` back.
    @inline(__always)
    func giveBack(_ id: Int32) {
        receiveFree[receiveAvailable] = id
        receiveAvailable += 1
    }

    @inline(__always)
    func receiveBuffer(_ id: Int32) -> UnsafeMutableRawPointer { receiveBase + Int(id) * receiveSize }

    // MARK: Ready list

    /// Puts `c` on the list of connections with work at the top of the loop (once).
    @inline(__always)
    func enqueueReady(_ c: ConnectionRef) {
        let i = c.pointee.session.index
        guard !isReady[i] else { return }
        isReady[i] = true
        readyNext[i] = -1
        if readyTail >= 0 { readyNext[Int(readyTail)] = Int32(i) } else { readyHead = Int32(i) }
        readyTail = Int32(i)
        readyCount += 1
    }

    /// The first connection on the ready list (taken off it), or nil.
    @inline(__always)
    func popReady() -> ConnectionRef? {
        while readyHead >= 0 {
            let i = Int(readyHead)
            readyHead = readyNext[i]
            if readyHead < 0 { readyTail = -1 }
            isReady[i] = false
            readyCount -= 1
            if let c = sessions.record(at: i) { return c }
        }
        return nil
    }

    var hasReady: Bool { readyHead >= 0 }

    // MARK: Connect

    /// ``RingContext/connect(to:timeout:)``: a non-blocking socket (`TCP_NODELAY`) and a session,
    /// its connect started, watched for writability (which says the connect ended: `SO_ERROR` tells
    /// how), under a deadline. A connect that fails at once fails at the top of the loop, so the
    /// handler hears of it after this call.
    override func connect(to address: SocketAddress, timeout: Duration) -> Result<ConnectionID, ConnectFailure> {
        guard !stopping else { return .failure(.cancelled) }
        guard outboundOpen < outboundCapacity else {
            stats.connectsCapped &+= 1
            return .failure(.capReached)
        }
        let fd: Int32
        do throws(SystemError) {
            fd = try NonBlocking.makeTCP(family: address.family)
        } catch {
            stats.connectsFailed &+= 1
            return .failure(.failed(error.errno))
        }
        guard let c = sessions.acquire(file: .fd(fd), slot: nil) else {
            _ = try? Sockets.close(fd)
            stats.connectsCapped &+= 1
            return .failure(.capReached)
        }
        openOutbound(c)
        c.pointee.readiness = 0
        c.pointee.lifecycle.posted(.connect)
        do throws(SystemError) {
            try epoll.add(fd, Self.connectionEvents, token: c.pointee.tag(.recv))
            if try NonBlocking.connect(fd, to: address) {
                c.pointee.readiness |= Self.writable
                enqueueReady(c)
            }
        } catch {
            c.pointee.connectError = -error.errno.rawValue
            enqueueReady(c)
        }
        // At most a year: a longer one (a "forever") would overflow the nanoseconds.
        let deadline = now &+ UInt64(min(max(timeout, .zero), .seconds(365 * 86_400)).nanoseconds)
        deadlines.append((deadline, c.pointee.tag(.recv)))
        return .success(connectionID(c))
    }

    /// What makes a connection readable (a FIN, a hang-up and an error are read as such), what
    /// makes a short read no proof of a drained socket (a FIN; urgent data, for a read stops at its
    /// mark), and what makes it writable (an error is found by the send).
    static let readableMask: UInt32 = Epoll.Events([.readable, .urgent, .peerClosed, .hangUp, .error]).rawValue
    static let peerDoneMask: UInt32 = Epoll.Events([.urgent, .peerClosed, .hangUp, .error]).rawValue
    static let writableMask: UInt32 = Epoll.Events([.writable, .hangUp, .error]).rawValue

    /// Connections are watched for everything at once, edge-triggered: one `epoll_ctl` per
    /// connection, none per message.
    static let connectionEvents: Epoll.Events = [.readable, .urgent, .writable, .peerClosed, .edgeTriggered]

    override func fillDriverStatistics(_ snapshot: inout ServerStatistics) {
        snapshot.completions = events
        snapshot.submits = waits
        snapshot.driver = .epoll
    }
}
