import Glibc
import SocketPool

/// The provided segments of a ring's send queue.
enum ProvidedSegments {
    /// No buffer ring: receives use the sessions' own buffers.
    case none
    /// A buffer ring of `count` buffers of `size` bytes from `base`; segment `id` is buffer `id`.
    case buffers(base: UnsafeMutableRawPointer, count: Int, size: Int)
    /// `count` slices of an incremental buffer ring, placed by its receiver
    /// (``IncrementalBufferReceiver``).
    case slices(count: Int)

    var count: Int {
        switch self {
        case .none: 0
        case .buffers(_, let count, _): count
        case .slices(let count): count
        }
    }
}
