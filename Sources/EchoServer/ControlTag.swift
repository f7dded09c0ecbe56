import SocketPool

/// The loop's own requests, each under a fixed tag: encoded and decoded here only.
///
/// | tag | request |
/// |---|---|
/// | `tick` | the housekeeping timeout |
/// | `wake` | the read of the ring's eventfd (a stop, mail, an injected fault) |
/// | `acceptsCancelled` | the cancels of the accepts at stop (their completions are only counted) |
/// | `mail(from:)` | a `MSG_RING` from ring `from`: mail waits in its mailbox |
/// | `mailSent(to:)` | this ring's own completion of a `MSG_RING` it sent to ring `to` |
/// | `socketOption` | a socket option set by the ring ahead of a linked request (`TCP_NODELAY` before a connect, `SO_LINGER` 0 before an abort's close), posted to complete only when it fails |
enum ControlTag: Hashable {
    case tick
    case wake
    case acceptsCancelled
    case mail(from: Int)
    case mailSent(to: Int)
    case socketOption

    /// The request's `user_data`.
    var rawValue: UInt64 {
        switch self {
        case .tick: RequestTag(Lease(index: 0, generation: 0), .tick).rawValue
        case .wake: RequestTag(Lease(index: 0, generation: 0), .wake).rawValue
        case .acceptsCancelled: RequestTag(Lease(index: 0, generation: 0), .acceptsCancelled).rawValue
        case .mail(let ring): RequestTag(Lease(index: UInt32(ring), generation: 0), .mail).rawValue
        case .mailSent(let ring): RequestTag(Lease(index: UInt32(ring), generation: 0), .mailSent).rawValue
        case .socketOption: RequestTag(Lease(index: 0, generation: 0), .socketOption).rawValue
        }
    }

    /// The control request a completion's tag names, or nil for any other tag.
    init?(_ tag: RequestTag) {
        switch tag.requestKind {
        case .tick: self = .tick
        case .wake: self = .wake
        case .acceptsCancelled: self = .acceptsCancelled
        case .mail: self = .mail(from: Int(tag.lease.index))
        case .mailSent: self = .mailSent(to: Int(tag.lease.index))
        case .socketOption: self = .socketOption
        default: return nil
        }
    }
}
