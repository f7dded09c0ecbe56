/// Routes each connection of a ring to the handler of the listener that accepted it: the server's
/// own handler for the main listener, each other ``Listener``'s for its own; an outbound
/// connection to the handler that opened it. Ring messages go to the main handler. Made only on rings that serve another listener, so the others' loops have
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

    /// Calls the other listener `listener`'s handler, with connects made meanwhile marked as its.
    @inline(__always)
    private mutating func side<T>(_ listener: Int, _ core: LoopCore, _ body: (inout any ConnectionHandler) -> T) -> T {
        core.dispatchingListener = UInt8(listener)
        defer { core.dispatchingListener = 0 }
        return body(&sides[listener]!)
    }

    /// Which handler opened outbound connection `index`.
    private func origin(_ index: Int, _ core: LoopCore) -> Int {
        index < core.outboundOrigin.count ? Int(core.outboundOrigin[index]) : 0
    }

    mutating func opened(_ connection: Connection) {
        let core = connection.ring.core
        let listener = connection.listener < 0 ? origin(connection.index, core) : connection.listener
        listenerOf[connection.index] = UInt8(listener)
        if listener == 0 { main.opened(connection) } else { side(listener, core) { $0.opened(connection) } }
    }

    mutating func received(_ bytes: UnsafeMutableRawBufferPointer, connection: Connection) -> Reply {
        let listener = Int(listenerOf[connection.index])
        return listener == 0
            ? main.received(bytes, connection: connection)
            : side(listener, connection.ring.core) { $0.received(bytes, connection: connection) }
    }

    mutating func writable(_ connection: Connection) {
        let listener = Int(listenerOf[connection.index])
        if listener == 0 { main.writable(connection) } else { side(listener, connection.ring.core) { $0.writable(connection) } }
    }

    mutating func inputEnded(_ connection: Connection) {
        let listener = Int(listenerOf[connection.index])
        if listener == 0 { main.inputEnded(connection) } else { side(listener, connection.ring.core) { $0.inputEnded(connection) } }
    }

    mutating func closed(_ connection: ConnectionID, end: ConnectionEnd, ring: RingContext) {
        let listener = Int(listenerOf[connection.index])
        if listener == 0 {
            main.closed(connection, end: end, ring: ring)
        } else {
            side(listener, ring.core) { $0.closed(connection, end: end, ring: ring) }
        }
    }

    mutating func received(message: RingMessage, ring: RingContext) { main.received(message: message, ring: ring) }

    mutating func connectFailed(_ connection: ConnectionID, _ failure: ConnectFailure, ring: RingContext) {
        let listener = origin(connection.index, ring.core)
        if listener == 0 {
            main.connectFailed(connection, failure, ring: ring)
        } else {
            side(listener, ring.core) { $0.connectFailed(connection, failure, ring: ring) }
        }
    }
}
