import SocketPool

/// Sends every byte back unchanged, without copying it.
public struct EchoHandler: ConnectionHandler {
    /// An echo handler.
    public init() {}

    /// Echoes all of `bytes`.
    @inlinable
    public mutating func received(_ bytes: UnsafeMutableRawBufferPointer, connection: Connection) -> Reply {
        .send(bytes.count)
    }
}
