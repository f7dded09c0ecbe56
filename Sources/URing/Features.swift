import CURing
import Glibc

/// `IORING_FEAT_*` bits the kernel reports at setup.
public struct Features: OptionSet, Sendable, Hashable {
    /// The raw feature bits from `io_uring_params.features`.
    public let rawValue: UInt32
    /// Wraps raw `IORING_FEAT_*` bits.
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// `IORING_FEAT_NODROP`: completions are never dropped when the CQ overflows.
    public static let noDrop = Features(rawValue: 1 << 1)
    /// `IORING_FEAT_SUBMIT_STABLE`: data for a request is consumed at submission.
    public static let submitStable = Features(rawValue: 1 << 2)
    /// `IORING_FEAT_FAST_POLL`: sockets are polled internally instead of punted to a worker.
    public static let fastPoll = Features(rawValue: 1 << 5)
    /// `IORING_FEAT_EXT_ARG`: waits take a timeout without an extra SQE.
    public static let extArg = Features(rawValue: 1 << 8)
    /// `IORING_FEAT_NATIVE_WORKERS`
    public static let nativeWorkers = Features(rawValue: 1 << 9)
    /// `IORING_FEAT_CQE_SKIP`: `IOSQE_CQE_SKIP_SUCCESS` is honoured.
    public static let cqeSkip = Features(rawValue: 1 << 11)
    /// `IORING_FEAT_LINKED_FILE`
    public static let linkedFile = Features(rawValue: 1 << 12)
    /// `IORING_FEAT_RECVSEND_BUNDLE` (Linux 6.10): receives and sends may take several provided
    /// buffers per completion.
    public static let recvSendBundle = Features(rawValue: 1 << 14)
}
