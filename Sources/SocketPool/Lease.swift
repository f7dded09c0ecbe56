/// One lease of a pool index: the index handed out, and the generation it had then.
///
/// Every pool here (``ContextSlab``, ``SlotPool``, ``SessionPool``) hands out indices this way. A
/// generation moves on each time its index is taken back, so a lease, or a completion's
/// ``RequestTag`` made from one, no longer matches once the index has been handed to someone else:
/// the pool reports it stale instead of delivering it to the new holder.
///
/// Generations are 24 bits wide, the width a ``RequestTag`` carries.
@frozen
public struct Lease: Hashable, Sendable, CustomStringConvertible {
    /// The index in its pool.
    public let index: UInt32
    /// Which lease of that index this is (24 bits).
    public let generation: UInt32

    /// A lease value.
    /// - Parameters:
    ///   - index: the index.
    ///   - generation: the lease's generation; only the low 24 bits are kept.
    @inlinable
    public init(index: UInt32, generation: UInt32) {
        self.index = index
        self.generation = generation & Lease.generationMask
    }

    /// Generations are 24 bits wide.
    public static let generationMask: UInt32 = 0x00FF_FFFF

    /// The generation after `generation`, wrapping within 24 bits.
    @inlinable
    public static func nextGeneration(after generation: UInt32) -> UInt32 {
        (generation &+ 1) & generationMask
    }

    /// `7.g3`: index 7, generation 3.
    public var description: String { "\(index).g\(generation)" }
}
