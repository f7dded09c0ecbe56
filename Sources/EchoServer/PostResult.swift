import SocketPool

/// What a post to another ring did.
public enum PostResult: Sendable, Hashable {
    /// The message is in the target ring's mailbox; the target's handler receives it in order.
    case posted
    /// Nothing was posted: the mailbox from this ring to the target is full
    /// (``ServerConfiguration/mailboxBytes``), or the message is larger than a quarter of it.
    case full
    /// No ring has that index, or it has stopped.
    case noSuchRing
}
