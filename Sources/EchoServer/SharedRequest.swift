import SocketPool

/// The context of a request that is not a connection's own, kept in the ring's shared
/// ``ContextSlab``: what its completion needs to know.
enum SharedRequest {
    /// A free context.
    case none
    /// An accept on listener `listener`, into `target`.
    case accept(listener: UInt8, into: AcceptInto)
    /// The close of a socket that never became a connection (over the cap, or accepted while
    /// stopping); its slot's lease goes back when it completes.
    case closeRejected(slot: Lease?)

    /// Where an accept puts the socket.
    enum AcceptInto {
        /// A slot the pool chose (single-shot).
        case slot(Lease)
        /// Slots the kernel chooses (`IORING_FILE_INDEX_ALLOC`, multishot).
        case anySlot
        /// Plain descriptors (multishot or single-shot).
        case descriptor
    }
}
