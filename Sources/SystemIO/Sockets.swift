import CSystemIO
import Glibc

/// The few plain socket system calls that io_uring requests need around them (creating a
/// listener, reading its port). They read `errno` at once, retry `EINTR` and throw
/// ``SystemError`` naming the call, so no other module touches `errno`.
public enum Sockets {
    /// Creates a TCP socket (`socket(2)` with `SOCK_CLOEXEC`).
    /// - Parameter family: `AF_INET` or `AF_INET6`.
    /// - Returns: the new descriptor.
    /// - Throws: ``SystemError`` for `socket`.
    public static func makeTCP(family: Int32 = AF_INET) throws(SystemError) -> Int32 {
        let fd = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), Int32(IPPROTO_TCP))
        if fd < 0 { throw SystemError("socket", errno: .current) }
        return fd
    }

    /// Creates a listening TCP socket bound to `address`.
    ///
    /// Sets `SO_REUSEADDR`, and `SO_REUSEPORT` when asked (one listener per ring thread, the kernel
    /// spreading connections among them). Options set here are inherited by accepted sockets, which
    /// matters for sockets that live only in a registered slot and so take no `setsockopt`.
    /// - Parameters:
    ///   - address: where to listen; port 0 lets the kernel pick.
    ///   - backlog: the `listen(2)` backlog.
    ///   - reusePort: set `SO_REUSEPORT`.
    ///   - noDelay: set `TCP_NODELAY` (inherited by accepted sockets).
    /// - Returns: the listening descriptor.
    /// - Throws: ``SystemError`` for `socket`, `setsockopt`, `bind` or `listen`.
    public static func listen(
        on address: SocketAddress, backlog: Int32 = 1024, reusePort: Bool = false, noDelay: Bool = true
    ) throws(SystemError) -> Int32 {
        let fd = try makeTCP(family: address.family)
        do throws(SystemError) {
            try setOption(fd, SOL_SOCKET, SO_REUSEADDR, 1)
            if reusePort { try setOption(fd, SOL_SOCKET, SO_REUSEPORT, 1) }
            if noDelay { try setOption(fd, Int32(IPPROTO_TCP), TCP_NODELAY, 1) }
            let bound = address.withSockAddr { Glibc.bind(fd, $0, $1) }
            if bound < 0 { throw SystemError("bind \(address)", errno: .current) }
            if Glibc.listen(fd, backlog) < 0 { throw SystemError("listen", errno: .current) }
        } catch {
            Glibc.close(fd)
            throw error
        }
        return fd
    }

    /// Sets an integer socket option (`setsockopt(2)`).
    /// - Parameters:
    ///   - fd: the socket.
    ///   - level: `SOL_SOCKET`, `IPPROTO_TCP`, ...
    ///   - name: the option.
    ///   - value: its value.
    /// - Throws: ``SystemError`` for `setsockopt`.
    public static func setOption(_ fd: Int32, _ level: Int32, _ name: Int32, _ value: Int32) throws(SystemError) {
        var v = value
        if setsockopt(fd, level, name, &v, socklen_t(MemoryLayout<Int32>.size)) < 0 {
            throw SystemError("setsockopt", errno: .current)
        }
    }

    /// Sets `SO_LINGER` {on, 0} on `fd`: its close then resets the connection (an RST, unsent data
    /// dropped) instead of sending a FIN.
    /// - Parameter fd: the socket.
    /// - Throws: ``SystemError`` for `setsockopt`.
    public static func setResetOnClose(_ fd: Int32) throws(SystemError) {
        var value = linger(l_onoff: 1, l_linger: 0)
        if setsockopt(fd, SOL_SOCKET, SO_LINGER, &value, socklen_t(MemoryLayout<linger>.size)) < 0 {
            throw SystemError("setsockopt SO_LINGER", errno: .current)
        }
    }

    /// The address a socket is bound to (`getsockname(2)`): how a listener on port 0 learns its port.
    /// - Parameter fd: the socket.
    /// - Returns: the local address.
    /// - Throws: ``SystemError`` for `getsockname`.
    public static func localAddress(_ fd: Int32) throws(SystemError) -> SocketAddress {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let result = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        if result < 0 { throw SystemError("getsockname", errno: .current) }
        return SocketAddress(storage: storage, length: length)
    }

    /// Closes a plain descriptor (`close(2)`; `EINTR` is not retried, as Linux has already closed it).
    /// - Parameter fd: the descriptor.
    /// - Throws: ``SystemError`` for `close` (`EBADF` for a descriptor that was not open).
    public static func close(_ fd: Int32) throws(SystemError) {
        if Glibc.close(fd) < 0 {
            let errno = Errno.current
            if errno != .interrupted { throw SystemError("close", errno: errno) }
        }
    }

    /// The running kernel's release (`uname(2)`), for example `6.18.44`.
    public static var kernelRelease: String {
        var names = utsname()
        guard uname(&names) == 0 else { return "" }
        return withUnsafeBytes(of: names.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    }

    /// Creates an `eventfd` (`eventfd(2)`, non-blocking, close-on-exec): a counter another thread
    /// can write to wake a ring that has a read pending on it.
    /// - Returns: the descriptor.
    /// - Throws: ``SystemError`` for `eventfd`.
    public static func makeEventFD() throws(SystemError) -> Int32 {
        let fd = eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK))
        if fd < 0 { throw SystemError("eventfd", errno: .current) }
        return fd
    }

    /// Adds `value` to an eventfd (`write(2)` of 8 bytes). Safe from any thread.
    /// - Parameters:
    ///   - fd: the eventfd.
    ///   - value: the amount to add.
    /// - Throws: ``SystemError`` for `write`.
    public static func signalEventFD(_ fd: Int32, _ value: UInt64 = 1) throws(SystemError) {
        var v = value
        while write(fd, &v, 8) < 0 {
            let errno = Errno.current
            if errno != .interrupted { throw SystemError("write eventfd", errno: errno) }
        }
    }
}
