import SocketPool
import URing

/// How many completions each loop turn harvested: a histogram with power-of-two buckets, cheap
/// enough to fill on every turn (one increment, no lock, no allocation).
///
/// A turn that harvests many completions per `io_uring_enter` amortises the kernel crossing; a
/// loop that mostly harvests one is latency-bound.
public struct TurnHistogram: Sendable, Equatable {
    /// Each bucket's inclusive upper bound; a last bucket, ``count`` minus the others, holds the rest.
    public static let upperBounds: [Int] = [1, 2, 4, 8, 16, 32, 64, 128, 256]
    static let buckets = 10
    private var counts: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) =
        (0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    /// Completions over all turns counted.
    public private(set) var sum: UInt64 = 0

    /// Empty.
    public init() {}

    /// Turns that harvested more than the previous bucket's bound and at most
    /// `upperBounds[bucket]` completions; bucket `upperBounds.count` holds the turns above 256.
    /// - Parameter bucket: `0...upperBounds.count`.
    public subscript(bucket: Int) -> UInt64 {
        precondition(bucket >= 0 && bucket < Self.buckets, "bucket \(bucket) out of 0...\(Self.buckets - 1)")
        return withUnsafeBytes(of: counts) { $0.load(fromByteOffset: bucket * 8, as: UInt64.self) }
    }

    /// Turns counted.
    public var count: UInt64 { (0..<Self.buckets).reduce(0) { $0 &+ self[$1] } }

    /// Counts one turn that harvested `completions`.
    @inline(__always)
    mutating func record(_ completions: Int) {
        let bucket = completions <= 1 ? 0 : min(Int.bitWidth - (completions - 1).leadingZeroBitCount, Self.buckets - 1)
        withUnsafeMutableBytes(of: &counts) { raw in
            let offset = bucket &* 8
            raw.storeBytes(of: raw.load(fromByteOffset: offset, as: UInt64.self) &+ 1, toByteOffset: offset, as: UInt64.self)
        }
        sum &+= UInt64(truncatingIfNeeded: completions)
    }

    mutating func add(_ other: TurnHistogram) {
        for bucket in 0..<Self.buckets {
            let total = self[bucket] &+ other[bucket]
            withUnsafeMutableBytes(of: &counts) { $0.storeBytes(of: total, toByteOffset: bucket * 8, as: UInt64.self) }
        }
        sum &+= other.sum
    }

    public static func == (a: TurnHistogram, b: TurnHistogram) -> Bool {
        a.sum == b.sum && (0..<buckets).allSatisfy { a[$0] == b[$0] }
    }
}
