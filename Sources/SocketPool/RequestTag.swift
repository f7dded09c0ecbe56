/// The 64-bit `user_data` of every request: which context (an index and the generation of its
/// lease) and what operation.
///
/// Bit layout (most significant first):
///
/// ```
///  63                              32 31                      8 7        0
/// +----------------------------------+-------------------------+----------+
/// |           index (32 bits)        |  generation (24 bits)   | kind (8) |
/// +----------------------------------+-------------------------+----------+
/// ```
///
/// The generation is what makes io_uring's version of the IOCP "reused socket keeps its old
/// completion key" bug harmless: when a context (or slot, or session) is released its generation
/// moves on, so a completion that arrives later, carrying the old generation, no longer matches and
/// is dropped as stale instead of being delivered to the new owner. Generations wrap after 2^24
/// reuses of one index; a completion would have to stay in flight across sixteen million reuses of
/// its own context to be mistaken, which a context in flight cannot be (it is not released until its
/// completion arrives, except through explicit cancellation).
///
/// The kind byte is the user's: SocketPool gives it no meaning.
@frozen
public struct RequestTag: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    /// The packed `user_data`.
    public let rawValue: UInt64
    /// Wraps a `user_data` value read from a completion.
    @inlinable public init(rawValue: UInt64) { self.rawValue = rawValue }

    /// Packs a tag.
    /// - Parameters:
    ///   - lease: the context, slot or session lease the request belongs to.
    ///   - kind: the operation, a number of the caller's.
    @inlinable
    public init(_ lease: Lease, kind: UInt8) {
        rawValue = UInt64(lease.index) << 32 | UInt64(lease.generation) << 8 | UInt64(kind)
    }

    /// The lease (bits 8–63).
    @inlinable public var lease: Lease {
        Lease(index: UInt32(truncatingIfNeeded: rawValue >> 32), generation: UInt32(truncatingIfNeeded: rawValue >> 8))
    }
    /// The operation (bits 0–7).
    @inlinable public var kind: UInt8 { UInt8(truncatingIfNeeded: rawValue) }

    /// `kind 3 #12.g3`.
    public var description: String { "kind \(kind) #\(lease)" }
}
