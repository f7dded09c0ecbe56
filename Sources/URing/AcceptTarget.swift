import CURing
import Glibc

/// Where an accepted connection's descriptor goes.
public enum AcceptTarget: Hashable, Sendable {
    /// A new plain descriptor (with `SOCK_CLOEXEC`), returned in the completion's result.
    case descriptor
    /// This registered-file slot (the IOCP `AcceptEx` with a pre-made socket). Single-shot only.
    case slot(UInt32)
    /// A free slot the kernel chooses (`IORING_FILE_INDEX_ALLOC`); the result is the slot index.
    case anySlot
}
