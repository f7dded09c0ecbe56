import CURing
import Glibc

/// Counters a ring keeps about itself.
public struct RingCounters: Sendable, Equatable {
    /// Calls to the submit functions (`io_uring_submit*`): at most one `io_uring_enter` each.
    public var submitCalls: UInt64 = 0
    /// Completions harvested.
    public var completions: UInt64 = 0
    /// Times a full submission queue forced an early submit while preparing a request.
    public var submitsForFullQueue: UInt64 = 0
    /// A fault to report from the next wait instead of entering the kernel (tests only).
    @usableFromInline package var injectedEnterFailure: Int32 = 0
    /// `MSG_RING` flags added to every message (tests only: an unknown flag makes it fail).
    @usableFromInline package var injectedMessageFlags: UInt32 = 0
    /// Submits that failed with `EAGAIN` or `EBUSY` while the SQ was full and were tried again.
    public var submitRetries: UInt64 = 0
    /// Harvests that found completions waiting in the kernel's overflow list
    /// (`IORING_SQ_CQ_OVERFLOW`): the CQ had been full. With `IORING_FEAT_NODROP` they are flushed
    /// into the CQ, not lost.
    public var overflowedHarvests: UInt64 = 0

    /// All zero.
    public init() {}
}
