import CSystemIO
import Glibc

/// A descriptor a request acts on: a plain fd, or a slot of the ring's registered file table.
@frozen
public struct FileRef: Hashable, Sendable, CustomStringConvertible {
    /// The fd, or the slot index when ``isFixed`` is set.
    public let raw: Int32
    /// Whether ``raw`` is a registered-file slot (`IOSQE_FIXED_FILE`).
    public let isFixed: Bool

    @inlinable init(raw: Int32, isFixed: Bool) {
        self.raw = raw
        self.isFixed = isFixed
    }

    /// A plain file descriptor.
    /// - Parameter fd: the descriptor.
    @inlinable public static func fd(_ fd: Int32) -> FileRef { FileRef(raw: fd, isFixed: false) }

    /// A slot of the registered file table (a socket that exists only inside the ring).
    /// - Parameter index: the slot index.
    @inlinable public static func slot(_ index: UInt32) -> FileRef {
        FileRef(raw: Int32(bitPattern: index), isFixed: true)
    }

    /// `fd 7` or `slot 3`.
    public var description: String { isFixed ? "slot \(raw)" : "fd \(raw)" }
}
