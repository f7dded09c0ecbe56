import CSystemIO
import Glibc

/// An epoll instance (`epoll_create1`): the readiness driver's wait. Interest is registered once
/// per descriptor, edge-triggered for connections (a readiness change each time), level-triggered
/// for listeners and the wake-up eventfd.
public struct Epoll: ~Copyable {
    /// The epoll descriptor.
    public let fd: Int32

    /// Readiness a descriptor is watched for, and reported with (`EPOLL*`).
    public struct Events: OptionSet, Sendable, Hashable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        /// `EPOLLIN`: readable (or a listener has a connection waiting).
        public static let readable = Events(rawValue: UInt32(EPOLLIN.rawValue))
        /// `EPOLLOUT`: writable (or a connect finished).
        public static let writable = Events(rawValue: UInt32(EPOLLOUT.rawValue))
        /// `EPOLLPRI`: urgent (out-of-band) data arrived; a read stops at its mark.
        public static let urgent = Events(rawValue: UInt32(EPOLLPRI.rawValue))
        /// `EPOLLRDHUP`: the peer shut its side (a FIN).
        public static let peerClosed = Events(rawValue: UInt32(EPOLLRDHUP.rawValue))
        /// `EPOLLHUP`: both directions are shut.
        public static let hangUp = Events(rawValue: UInt32(EPOLLHUP.rawValue))
        /// `EPOLLERR`: an error is pending (`SO_ERROR` says which).
        public static let error = Events(rawValue: UInt32(EPOLLERR.rawValue))
        /// `EPOLLET`: edge-triggered.
        public static let edgeTriggered = Events(rawValue: EPOLLET.rawValue)
    }

    /// - Throws: ``SystemError`` for `epoll_create1`.
    public init() throws(SystemError) {
        let fd = epoll_create1(Int32(EPOLL_CLOEXEC))
        if fd < 0 { throw SystemError("epoll_create1", errno: .current) }
        self.fd = fd
    }

    deinit { Glibc.close(fd) }

    /// Watches `descriptor` for `events`, reported with `token`.
    /// - Throws: ``SystemError`` for `epoll_ctl`.
    public func add(_ descriptor: Int32, _ events: Events, token: UInt64) throws(SystemError) {
        var event = epoll_event(events: events.rawValue, data: epoll_data_t(u64: token))
        if epoll_ctl(fd, EPOLL_CTL_ADD, descriptor, &event) < 0 { throw SystemError("epoll_ctl add", errno: .current) }
    }

    /// Stops watching `descriptor` (closing it does too, when it has no other reference).
    public func remove(_ descriptor: Int32) {
        var event = epoll_event()
        _ = epoll_ctl(fd, EPOLL_CTL_DEL, descriptor, &event)
    }

    /// Waits up to `timeout` milliseconds (-1: for good, 0: not at all) for readiness, into
    /// `events`. `EINTR` returns 0.
    /// - Returns: how many events were written.
    /// - Throws: ``SystemError`` for `epoll_wait`.
    public func wait(_ events: UnsafeMutablePointer<epoll_event>, capacity: Int, timeout: Int32) throws(SystemError) -> Int {
        let n = epoll_wait(fd, events, Int32(capacity), timeout)
        if n >= 0 { return Int(n) }
        let e = Errno.current
        if e == .interrupted { return 0 }
        throw SystemError("epoll_wait", errno: e)
    }
}

extension epoll_event {
    /// The events reported.
    @inlinable public var readiness: Epoll.Events { Epoll.Events(rawValue: events) }
    /// The token the descriptor was added with.
    @inlinable public var token: UInt64 { data.u64 }
}

/// Non-blocking socket calls for a readiness driver: each returns what happened, with `EAGAIN`
/// as a result of its own rather than an error.
public enum NonBlocking {
    /// What a read or a write did.
    public enum Outcome: Equatable {
        /// This many bytes (0 for a read: the peer's FIN).
        case bytes(Int)
        /// Nothing now: wait for readiness.
        case wouldBlock
        /// An error (a reset, say).
        case failed(Errno)
    }

    @usableFromInline
    static func outcome(_ n: Int) -> Outcome {
        if n >= 0 { return .bytes(n) }
        let e = Errno.current
        return e == .wouldBlock ? .wouldBlock : .failed(e)
    }

    /// `recv(2)` into `buffer`, retrying `EINTR`.
    @inlinable
    public static func receive(_ fd: Int32, into buffer: UnsafeMutableRawPointer, count: Int) -> Outcome {
        while true {
            let n = recv(fd, buffer, count, Int32(MSG_DONTWAIT))
            if n < 0 && Errno.current == .interrupted { continue }
            return outcome(n)
        }
    }

    /// `send(2)` of `buffer` (`MSG_NOSIGNAL`: a closed peer is an error, not a SIGPIPE).
    @inlinable
    public static func send(_ fd: Int32, _ buffer: UnsafeRawPointer, count: Int) -> Outcome {
        while true {
            let n = Glibc.send(fd, buffer, count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT))
            if n < 0 && Errno.current == .interrupted { continue }
            return outcome(n)
        }
    }

    /// `sendmsg(2)` of a gathered message (`MSG_NOSIGNAL`).
    @inlinable
    public static func send(_ fd: Int32, message: UnsafePointer<msghdr>) -> Outcome {
        while true {
            let n = sendmsg(fd, message, Int32(MSG_NOSIGNAL | MSG_DONTWAIT))
            if n < 0 && Errno.current == .interrupted { continue }
            return outcome(n)
        }
    }

    /// `accept4(2)` of a non-blocking socket (`SOCK_NONBLOCK | SOCK_CLOEXEC`): the descriptor,
    /// or nil when none waits; throws for anything else (`EMFILE`, say).
    public static func accept(_ listener: Int32) throws(SystemError) -> Int32? {
        while true {
            let fd = csystemio_accept(listener)
            if fd >= 0 { return fd }
            let e = Errno.current
            if e == .interrupted || e == .connectionAborted { continue }
            if e == .wouldBlock { return nil }
            throw SystemError("accept4", errno: e)
        }
    }

    /// A non-blocking TCP socket (`SOCK_NONBLOCK | SOCK_CLOEXEC`) with `TCP_NODELAY`.
    public static func makeTCP(family: Int32) throws(SystemError) -> Int32 {
        let fd = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if fd < 0 { throw SystemError("socket", errno: .current) }
        try? Sockets.setOption(fd, Int32(IPPROTO_TCP), TCP_NODELAY, 1)
        return fd
    }

    /// Starts a connect: true when it completed at once, false when it is in progress (wait for
    /// writability, then ``pendingError(_:)``).
    public static func connect(_ fd: Int32, to address: SocketAddress) throws(SystemError) -> Bool {
        let r = address.withSockAddr { Glibc.connect(fd, $0, $1) }
        if r == 0 { return true }
        let e = Errno.current
        if e == .inProgress || e == .interrupted { return false }
        throw SystemError("connect", errno: e)
    }

    /// The socket's pending error (`SO_ERROR`), 0 for none: how a connect in progress ended.
    public static func pendingError(_ fd: Int32) -> Int32 {
        var value: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        if getsockopt(fd, SOL_SOCKET, SO_ERROR, &value, &length) < 0 { return Errno.current.rawValue }
        return value
    }

    /// Makes a descriptor non-blocking (a listener the server made blocking).
    public static func setNonBlocking(_ fd: Int32) {
        let flags = fcntl(fd, F_GETFL)
        if flags >= 0 { _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK) }
    }
}
