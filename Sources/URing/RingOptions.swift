import CURing
import Glibc

/// Options for ``Ring/init(_:)``.
public struct RingOptions: Sendable {
    /// Submission queue entries (rounded up to a power of two by the kernel).
    public var entries: UInt32
    /// Completion queue entries; `nil` asks for four times ``entries``, so bursts of completions
    /// (multishot requests post many per SQE) rarely hit the overflow path.
    public var completionEntries: UInt32?
    /// Flag sets to try in order; the first the kernel grants wins.
    public var flagPreference: [SetupFlags]
    /// Register the ring fd with the kernel (`io_uring_register_ring_fd`); saves a file lookup per
    /// `io_uring_enter`. Failure to register is not an error.
    public var registerRingDescriptor: Bool

    /// The chain used by default: `SINGLE_ISSUER|DEFER_TASKRUN|SUBMIT_ALL` (Linux 6.1),
    /// then `COOP_TASKRUN|TASKRUN_FLAG|SUBMIT_ALL` (5.19), then `SUBMIT_ALL` (5.18), then none.
    public static let automaticFlags: [SetupFlags] = [
        [.singleIssuer, .deferTaskrun, .submitAll],
        [.coopTaskrun, .taskrunFlag, .submitAll],
        [.submitAll],
        [],
    ]

    /// Creates options.
    /// - Parameters:
    ///   - entries: submission queue size.
    ///   - completionEntries: completion queue size, `nil` for 4 × `entries`.
    ///   - flagPreference: the flag sets to try in order.
    ///   - registerRingDescriptor: whether to register the ring fd.
    public init(
        entries: UInt32 = 256,
        completionEntries: UInt32? = nil,
        flagPreference: [SetupFlags] = RingOptions.automaticFlags,
        registerRingDescriptor: Bool = true
    ) {
        self.entries = entries
        self.completionEntries = completionEntries
        self.flagPreference = flagPreference
        self.registerRingDescriptor = registerRingDescriptor
    }
}
