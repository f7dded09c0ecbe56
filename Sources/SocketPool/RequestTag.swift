import URing

/// What a request is, packed into the low byte of its ``RequestTag``.
///
/// The values name the operations this project submits; values from ``user`` upward are free for
/// a handler's own requests.
@frozen
public struct OperationKind: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    /// The kind's number (0...255).
    public let rawValue: UInt8
    /// Wraps a kind number.
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// A no-op (used to inject completions in tests).
    public static let nop = OperationKind(rawValue: 1)
    /// An accept (single-shot or multishot).
    public static let accept = OperationKind(rawValue: 2)
    /// A receive.
    public static let recv = OperationKind(rawValue: 3)
    /// A send.
    public static let send = OperationKind(rawValue: 4)
    /// A close or close of a fixed slot.
    public static let close = OperationKind(rawValue: 5)
    /// A shutdown.
    public static let shutdown = OperationKind(rawValue: 6)
    /// A cancel.
    public static let cancel = OperationKind(rawValue: 7)
    /// A timeout (idle checks, wake-ups).
    public static let timeout = OperationKind(rawValue: 8)
    /// A connect, or a disconnect through `connect(AF_UNSPEC)`.
    public static let connect = OperationKind(rawValue: 9)
    /// A wake-up from another thread (eventfd read or `MSG_RING`).
    public static let wake = OperationKind(rawValue: 10)
    /// A cancel of a connection's send (a connection owns one cancel for its receive, ``cancel``,
    /// and one for its send).
    public static let cancelSend = OperationKind(rawValue: 11)
    /// A message posted by another ring (`MSG_RING`), or the sender's own completion of one.
    public static let message = OperationKind(rawValue: 12)
    /// The close of a socket that never became a connection (over the cap, or accepted while
    /// stopping).
    public static let closeRejected = OperationKind(rawValue: 13)
    /// An accept on a server's secondary listener (a metrics endpoint, say).
    public static let acceptSecondary = OperationKind(rawValue: 14)
    /// The first kind free for users.
    public static let user = OperationKind(rawValue: 64)

    /// `recv`, `send`, ... or `kind N`.
    public var description: String {
        let names = [
            "none", "nop", "accept", "recv", "send", "close", "shutdown", "cancel", "timeout", "connect", "wake",
            "cancelSend", "message", "closeRejected", "acceptSecondary",
        ]
        return Int(rawValue) < names.count ? names[Int(rawValue)] : "kind \(rawValue)"
    }
}

/// The 64-bit `user_data` of every request: which context (slot index), which incarnation of it
/// (generation) and what operation.
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
@frozen
public struct RequestTag: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    /// The packed `user_data`.
    public let rawValue: UInt64
    /// Wraps a `user_data` value read from a completion.
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    /// Generations are 24 bits wide.
    public static let generationMask: UInt32 = 0x00FF_FFFF

    /// Packs a tag.
    /// - Parameters:
    ///   - index: the context, slot or session index.
    ///   - generation: its current generation (only the low 24 bits are kept).
    ///   - kind: the operation.
    public init(index: UInt32, generation: UInt32, kind: OperationKind) {
        rawValue = UInt64(index) << 32 | UInt64(generation & RequestTag.generationMask) << 8 | UInt64(kind.rawValue)
    }

    /// The index (bits 32–63).
    public var index: UInt32 { UInt32(truncatingIfNeeded: rawValue >> 32) }
    /// The generation (bits 8–31).
    public var generation: UInt32 { UInt32(truncatingIfNeeded: rawValue >> 8) & RequestTag.generationMask }
    /// The operation (bits 0–7).
    public var kind: OperationKind { OperationKind(rawValue: UInt8(truncatingIfNeeded: rawValue)) }

    /// The generation after `generation`, wrapping within 24 bits.
    public static func nextGeneration(after generation: UInt32) -> UInt32 {
        (generation &+ 1) & generationMask
    }

    /// `recv#12.g3`.
    public var description: String { "\(kind)#\(index).g\(generation)" }
}
