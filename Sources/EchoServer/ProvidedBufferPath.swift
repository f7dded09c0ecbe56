import SocketPool
import URing

/// What both receivers over a provided-buffer ring share: receiving stops at a connection's share
/// of the ring; a receive is armed while buffers (and, for slices, table entries) are left, and
/// otherwise its connection waits in a FIFO list until buffers come back; after each batch the
/// returned buffers are published and as many waiters re-armed as those buffers can serve.
protocol ProvidedBufferPath: ReceivePath, ~Copyable {
    /// Whether a receive can be armed now.
    var canArm: Bool { get }
    /// How many waiting connections the buffers free now can serve.
    var wakeBudget: Int { get }
    /// Publishes the buffers given back since the last batch (one store of the ring's tail).
    mutating func commitReturned()
    /// The first waiting connection that still wants to receive, unlinked; nil when none is left.
    mutating func nextWaiter(_ core: URingCore) -> ConnectionRef?
}

extension ProvidedBufferPath where Self: ~Copyable {
    /// At its own share, a connection is re-armed when its sends give buffers back; with the ring
    /// empty, it waits.
    @inline(__always)
    mutating func armOrWait(_ c: ConnectionRef, core: URingCore) throws(URingError) {
        guard c.pointee.buffersHeld < maxHeldPerConnection else { return }
        if canArm {
            try arm(c, core: core)
        } else {
            waitForBuffers(c)
        }
    }

    mutating func afterBatch(core: URingCore) throws(URingError) {
        commitReturned()
        guard canArm else { return }
        // Wake no more waiters than the free buffers serve: the rest would only run dry again.
        var budget = wakeBudget
        while budget > 0, let c = nextWaiter(core) {
            budget -= 1
            try armOrWait(c, core: core)
        }
    }
}
