import CURing
import Glibc

/// One completion queue entry, copied out of the CQ ring.
///
/// Copying the 16 bytes lets the ring advance the CQ once per batch while handlers keep what they
/// need. A negative ``result`` is an error: read it through ``check(_:)`` or ``error``.
@frozen
public struct Completion: Sendable, Hashable {
    /// The `user_data` the request was submitted with.
    public let tag: UInt64
    /// The request's result: a byte count, a descriptor, 0, or `-errno`.
    public let result: Int32
    /// `IORING_CQE_F_*` flags.
    public let flags: UInt32

    /// Creates a completion from its three fields (tests inject completions this way).
    /// - Parameters:
    ///   - tag: the `user_data`.
    ///   - result: `res`.
    ///   - flags: `flags`.
    @inlinable
    package init(tag: UInt64, result: Int32, flags: UInt32) {
        self.tag = tag
        self.result = result
        self.flags = flags
    }

    /// `IORING_CQE_F_MORE`: the multishot request that posted this stays armed. When a multishot
    /// completion lacks it, the request has ended and must be submitted again.
    @inlinable public var hasMore: Bool { flags & UInt32(IORING_CQE_F_MORE) != 0 }

    /// `IORING_CQE_F_BUFFER`: a provided buffer was consumed; see ``bufferID``.
    @inlinable public var hasBuffer: Bool { flags & UInt32(IORING_CQE_F_BUFFER) != 0 }

    /// The provided-buffer id (upper 16 bits of `flags`) when ``hasBuffer`` is set.
    @inlinable public var bufferID: UInt16? {
        hasBuffer ? UInt16(truncatingIfNeeded: flags >> UInt32(IORING_CQE_BUFFER_SHIFT)) : nil
    }

    /// `IORING_CQE_F_BUF_MORE` (Linux 6.12, an incremental ``BufferRing``): the kernel keeps the
    /// completion's buffer at the ring head and will put more data into it, after these bytes.
    /// Without it, the kernel is done with the buffer.
    @inlinable public var hasBufferMore: Bool { flags & UInt32(CURING_IORING_CQE_F_BUF_MORE) != 0 }

    /// `IORING_CQE_F_NOTIF`: a zero-copy send's notification that its buffer may be reused.
    @inlinable public var isNotification: Bool { flags & UInt32(IORING_CQE_F_NOTIF) != 0 }

    /// The error when ``result`` is negative.
    @inlinable public var error: Errno? { result < 0 ? Errno(rawValue: -result) : nil }

    /// The non-negative result, or a thrown error naming `operation`.
    /// - Parameter operation: what the request was, for the error message (`"recv"`).
    /// - Returns: ``result`` when it is not negative.
    /// - Throws: ``URingError`` carrying `-result` when it is.
    @inlinable
    public func check(_ operation: String) throws(URingError) -> Int32 {
        if result < 0 { throw URingError(operation, result: result) }
        return result
    }
}
