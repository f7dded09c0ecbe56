import SocketPool
import URing

/// How connections receive.
public enum ReceiveStrategy: String, Sendable, Hashable, CaseIterable {
    /// Each session owns a buffer; one recv at a time into it, then the send of what came (the IOCP
    /// way). Memory grows with the number of connections.
    case perSessionBuffer
    /// Multishot recv over one provided-buffer ring shared by all sessions of a ring: memory is
    /// independent of the connection count.
    case bufferRing
}
