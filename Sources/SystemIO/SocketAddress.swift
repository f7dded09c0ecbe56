import CSystemIO
import Glibc

/// A socket address held by value (`sockaddr_storage` + length), for connect and bind.
public struct SocketAddress: Sendable, Hashable, CustomStringConvertible {
    @usableFromInline package var storage: sockaddr_storage
    /// The length of the address in bytes.
    public let length: socklen_t

    /// An IPv4 or IPv6 address from its text form.
    /// - Parameters:
    ///   - host: `"127.0.0.1"`, `"::1"`, ...; names are not resolved.
    ///   - port: the TCP port.
    /// - Returns: `nil` when `host` is not a numeric IPv4 or IPv6 address.
    public init?(host: String, port: UInt16) {
        var storage = sockaddr_storage()
        var v4 = in_addr()
        var v6 = in6_addr()
        if inet_pton(AF_INET, host, &v4) == 1 {
            var sin = sockaddr_in()
            sin.sin_family = sa_family_t(AF_INET)
            sin.sin_port = port.bigEndian
            sin.sin_addr = v4
            withUnsafeBytes(of: sin) { src in withUnsafeMutableBytes(of: &storage) { $0.copyMemory(from: src) } }
            self.storage = storage
            self.length = socklen_t(MemoryLayout<sockaddr_in>.size)
        } else if inet_pton(AF_INET6, host, &v6) == 1 {
            var sin6 = sockaddr_in6()
            sin6.sin6_family = sa_family_t(AF_INET6)
            sin6.sin6_port = port.bigEndian
            sin6.sin6_addr = v6
            withUnsafeBytes(of: sin6) { src in withUnsafeMutableBytes(of: &storage) { $0.copyMemory(from: src) } }
            self.storage = storage
            self.length = socklen_t(MemoryLayout<sockaddr_in6>.size)
        } else {
            return nil
        }
    }

    /// Wraps raw address bytes, as `getsockname` returns them.
    /// - Parameters:
    ///   - storage: the address.
    ///   - length: its length.
    public init(storage: sockaddr_storage, length: socklen_t) {
        self.storage = storage
        self.length = length
    }

    /// `AF_UNSPEC`: connecting a TCP socket to it dissolves the connection (an abortive
    /// disconnect, the peer sees RST) and leaves the socket ready to connect again.
    public static var unspecified: SocketAddress {
        var storage = sockaddr_storage()
        storage.ss_family = sa_family_t(AF_UNSPEC)
        return SocketAddress(storage: storage, length: socklen_t(MemoryLayout<sa_family_t>.size))
    }

    /// The address family (`AF_INET`, `AF_INET6`, `AF_UNSPEC`).
    public var family: Int32 { Int32(storage.ss_family) }

    /// The port, for IPv4 and IPv6.
    public var port: UInt16 {
        var copy = storage
        switch family {
        case AF_INET:
            return withUnsafeBytes(of: &copy) { UInt16(bigEndian: $0.load(as: sockaddr_in.self).sin_port) }
        case AF_INET6:
            return withUnsafeBytes(of: &copy) { UInt16(bigEndian: $0.load(as: sockaddr_in6.self).sin6_port) }
        default: return 0
        }
    }

    /// The numeric host (`127.0.0.1`).
    public var host: String {
        var copy = storage
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
        switch family {
        case AF_INET:
            var a = withUnsafeBytes(of: &copy) { $0.load(as: sockaddr_in.self).sin_addr }
            inet_ntop(AF_INET, &a, &text, socklen_t(text.count))
        case AF_INET6:
            var a = withUnsafeBytes(of: &copy) { $0.load(as: sockaddr_in6.self).sin6_addr }
            inet_ntop(AF_INET6, &a, &text, socklen_t(text.count))
        default: return "unspecified"
        }
        return String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// `127.0.0.1:7777`, or `[::1]:7777`.
    public var description: String { family == AF_INET6 ? "[\(host)]:\(port)" : "\(host):\(port)" }

    /// Calls `body` with the address as a `sockaddr` pointer and its length.
    /// - Parameter body: receives the pointer, valid only during the call.
    /// - Returns: what `body` returns.
    public func withSockAddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) throws -> R) rethrows -> R {
        var copy = storage
        return try withUnsafePointer(to: &copy) {
            try $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { try body($0, length) }
        }
    }

    /// Whether two addresses have the same length and bytes.
    public static func == (lhs: SocketAddress, rhs: SocketAddress) -> Bool {
        lhs.length == rhs.length
            && withUnsafeBytes(of: lhs.storage) { l in
                withUnsafeBytes(of: rhs.storage) { r in l.prefix(Int(lhs.length)).elementsEqual(r.prefix(Int(lhs.length))) }
            }
    }

    /// Hashes the address bytes.
    /// - Parameter hasher: the hasher.
    public func hash(into hasher: inout Hasher) {
        withUnsafeBytes(of: storage) { hasher.combine(bytes: UnsafeRawBufferPointer(rebasing: $0.prefix(Int(length)))) }
    }
}
