import CURing
import Glibc

/// `IORING_SETUP_*` flags.
public struct SetupFlags: OptionSet, Sendable, Hashable, CustomStringConvertible {
    /// The raw flag bits as passed in `io_uring_params.flags`.
    public let rawValue: UInt32
    /// Wraps raw `IORING_SETUP_*` bits.
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// `IORING_SETUP_CQSIZE`: the completion queue size is given explicitly.
    public static let cqSize = SetupFlags(rawValue: 1 << 3)
    /// `IORING_SETUP_CLAMP`: clamp sizes to the maximum rather than fail.
    public static let clamp = SetupFlags(rawValue: 1 << 4)
    /// `IORING_SETUP_SUBMIT_ALL` (5.18): keep submitting after a request fails to prepare.
    public static let submitAll = SetupFlags(rawValue: 1 << 7)
    /// `IORING_SETUP_COOP_TASKRUN` (5.19): no interrupting IPI for task work.
    public static let coopTaskrun = SetupFlags(rawValue: 1 << 8)
    /// `IORING_SETUP_TASKRUN_FLAG` (5.19): flag pending task work in the SQ ring.
    public static let taskrunFlag = SetupFlags(rawValue: 1 << 9)
    /// `IORING_SETUP_SINGLE_ISSUER` (6.0): only one thread submits.
    public static let singleIssuer = SetupFlags(rawValue: 1 << 12)
    /// `IORING_SETUP_DEFER_TASKRUN` (6.1): run task work only when the owner waits for events.
    public static let deferTaskrun = SetupFlags(rawValue: 1 << 13)

    /// `SINGLE_ISSUER|DEFER_TASKRUN`, for example.
    public var description: String {
        let names: [(SetupFlags, String)] = [
            (.cqSize, "CQSIZE"), (.clamp, "CLAMP"), (.submitAll, "SUBMIT_ALL"), (.coopTaskrun, "COOP_TASKRUN"),
            (.taskrunFlag, "TASKRUN_FLAG"), (.singleIssuer, "SINGLE_ISSUER"), (.deferTaskrun, "DEFER_TASKRUN"),
        ]
        var parts = names.filter { contains($0.0) }.map(\.1)
        let known = names.reduce(SetupFlags()) { $0.union($1.0) }
        let unknown = subtracting(known)
        if !unknown.isEmpty { parts.append("0x" + String(unknown.rawValue, radix: 16)) }
        return parts.isEmpty ? "none" : parts.joined(separator: "|")
    }
}
