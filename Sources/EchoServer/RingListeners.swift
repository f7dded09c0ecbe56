import Dispatch
import Logging
import Metrics
import ServiceLifecycle
import SocketPool
import Synchronization
import URing

/// One of the server's other listeners, as its ring sees it.
struct SideListener: Sendable {
    let fd: Int32
    /// Its ``Connection/listener`` number, 1...
    let number: UInt8
    let ring: Int
    let maxConnections: Int
}

/// The listening sockets one ring accepts on: its share of the main listener (`SO_REUSEPORT`), and
/// the other listeners it serves.
struct RingListeners: Sendable {
    let main: Int32
    let sides: [SideListener]

    /// Sessions beyond the ring's share of the cap: each other listener's own, one more than its
    /// cap (a handler that evicts can still take a new connection when full).
    var extraSessions: Int { sides.reduce(0) { $0 + $1.maxConnections + 1 } }

    func close() {
        _ = try? Sockets.close(main)
        for side in sides { _ = try? Sockets.close(side.fd) }
    }
}
