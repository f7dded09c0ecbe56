/// Routes each connection of a ring to the handler of the listener that accepted it: the server's
/// own handler for the main listener, each other ``Listener``'s for its own. Ring messages go to
/// the main handler. Made only on rings that serve another listener, so the others' loops have
/// no extra branch; the other listeners' handlers are called through their existential.
struct ListenerRouter<Main: ConnectionHandler>: ConnectionHandler {
    var main: Main
    /// By listener number; nil for the main listener's place (0) and listeners of other rings.
    var sides: [(any ConnectionHandler)?]
    /// The listener of the connection at each session index.
    var listenerOf: [UInt8] = []

    static var pausesReceivingForQueuedOutput: Bool { Main.pausesReceivingForQueuedOutput }

    mutating func start(capacity: Int) {
        main.start(capacity: capacity)
        for i in sides.indices { sides[i]?.start(capacity: capacity) }
        listenerOf = Array(repeating: 0, count: capacity)
    }

    mutating func opened(_ connection: Connection) {
        // Outbound connections (-1) belong to the main handler, which opens them.
        let listener = max(connection.listener, 0)
        listenerOf[connection.index] = UInt8(listener)
        if listener == 0 { main.opened(connection) } else { sides[listener]!.opened(connection) }
    }

    mutating func received(_ bytes: UnsafeMutableRawBufferPointer, connection: Connection) -> Reply {
        let listener = Int(listenerOf[connection.index])
        return listener == 0
            ? main.received(bytes, connection: connection) : sides[listener]!.received(bytes, connection: connection)
    }

    mutating func writable(_ connection: Connection) {
        let listener = Int(listenerOf[connection.index])
        if listener == 0 { main.writable(connection) } else { sides[listener]!.writable(connection) }
    }

    mutating func inputEnded(_ connection: Connection) {
        let listener = Int(listenerOf[connection.index])
        if listener == 0 { main.inputEnded(connection) } else { sides[listener]!.inputEnded(connection) }
    }

    mutating func closed(_ connection: ConnectionID, ring: RingContext) {
        let listener = Int(listenerOf[connection.index])
        if listener == 0 { main.closed(connection, ring: ring) } else { sides[listener]!.closed(connection, ring: ring) }
    }

    mutating func received(message: RingMessage, ring: RingContext) { main.received(message: message, ring: ring) }

    mutating func connectFailed(_ connection: ConnectionID, _ failure: ConnectFailure, ring: RingContext) {
        main.connectFailed(connection, failure, ring: ring)
    }
}
