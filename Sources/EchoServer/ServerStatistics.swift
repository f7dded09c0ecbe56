import SocketPool
import URing

/// A server's counters, summed over its ring threads. A value: read it at any time through
/// ``Server/statistics``.
public struct ServerStatistics: Sendable, Equatable, CustomStringConvertible {
    /// Connections accepted (including those rejected at the connection cap). Connections to the
    /// server's other listeners (a metrics endpoint, say) are counted apart, in ``endpointConnections``.
    public var accepted: UInt64 = 0
    /// Connections open now (not counting the other listeners').
    public var active: Int = 0
    /// Connections whose close completed (not counting the other listeners').
    public var closed: UInt64 = 0
    /// Connections accepted on the other listeners. They and their bytes are not in ``accepted``,
    /// ``closed``, ``active``, ``bytesIn`` or ``bytesOut``; their completions are in ``completions``.
    public var endpointConnections: UInt64 = 0
    /// Connections closed at once because the connection cap was reached.
    public var rejected: UInt64 = 0
    /// Connections closed by the idle timeout.
    public var idleClosed: UInt64 = 0
    /// Connections closed because their queued output did not move for the idle timeout (a peer
    /// that stopped reading), in any state.
    public var stalledClosed: UInt64 = 0
    /// Connections that ended with an error (reset, broken pipe, ...).
    public var errors: UInt64 = 0
    /// Bytes received.
    public var bytesIn: UInt64 = 0
    /// Bytes sent.
    public var bytesOut: UInt64 = 0
    /// Completions handled.
    public var completions: UInt64 = 0
    /// Completions dropped because their context had been recycled (generation mismatch).
    public var staleCompletions: UInt64 = 0
    /// Submit calls (`io_uring_enter` at most once each).
    public var submits: UInt64 = 0
    /// Accepts that failed with an unexpected error (each backs off to the next tick).
    public var acceptErrors: UInt64 = 0
    /// Times accepting paused (descriptor or slot exhaustion), one per episode.
    public var acceptPauses: UInt64 = 0
    /// Accepts armed again after one ended: a multishot accept's completion without `F_MORE`, an
    /// error, or the end of a pause.
    public var acceptRearms: UInt64 = 0
    /// Multishot receives re-armed after a completion without `F_MORE`.
    public var receiveRearms: UInt64 = 0
    /// Receive completions that carried more than one provided buffer (a bundle).
    public var receiveBundles: UInt64 = 0
    /// Receives that ended with `ENOBUFS` (buffer ring empty).
    public var bufferShortages: UInt64 = 0
    /// Times a connection's receiving paused because it held the most unsent bytes allowed.
    public var receivePauses: UInt64 = 0
    /// Times the completion queue overflowed: harvests that found completions held back in the
    /// kernel's overflow list (none is lost with `IORING_FEAT_NODROP`), plus any the kernel dropped.
    public var completionQueueOverflows: UInt64 = 0
    /// Provided buffers currently held by the server (taken by a receive, not yet given back); with
    /// incremental buffers, the slices held (several can share one buffer). 0 when idle; negative
    /// would mean a buffer was given back twice.
    public var buffersHeld: Int = 0
    /// Writes refused because the connection's output bound or the outbound buffers were reached.
    public var writesRefused: UInt64 = 0
    /// Outbound buffers holding written bytes not yet sent.
    public var outboundBuffersInUse: Int = 0
    /// Messages posted to other rings.
    public var posted: UInt64 = 0
    /// Posts refused because the mailbox was full.
    public var postsRefused: UInt64 = 0
    /// Messages delivered from other rings.
    public var delivered: UInt64 = 0
    /// `MSG_RING` requests that failed (the eventfd woke the target instead).
    public var messageRingFailures: UInt64 = 0
    /// Features given up at run time because the kernel refused them (each logged once; see
    /// ``features``).
    public var featureFallbacks: UInt64 = 0
    /// `io_uring_enter` calls that failed with `EAGAIN` or `EBUSY` and were retried after reaping.
    public var enterRetries: UInt64 = 0
    /// Times `io_uring_enter` reported dropped completions (`EBADR`).
    public var droppedCompletions: UInt64 = 0
    /// Outbound connections that connected (``RingContext/connect(to:timeout:)``).
    public var connects: UInt64 = 0
    /// Outbound connects refused by the peer (nothing listening).
    public var connectsRefused: UInt64 = 0
    /// Outbound connects that timed out.
    public var connectsTimedOut: UInt64 = 0
    /// Outbound connects with no route to the peer.
    public var connectsUnreachable: UInt64 = 0
    /// Outbound connects refused at once: the ring's outbound cap was reached, or no session or slot
    /// was free.
    public var connectsCapped: UInt64 = 0
    /// Outbound connects cancelled (a stop, or a close before they connected).
    public var connectsCancelled: UInt64 = 0
    /// Outbound connects that failed otherwise.
    public var connectsFailed: UInt64 = 0
    /// Outbound connections whose close completed (they are not in ``closed``).
    public var outboundClosed: UInt64 = 0
    /// Outbound connections open or connecting now (they are not in ``active``).
    public var outboundActive: Int = 0
    /// Completions harvested per loop turn.
    public var completionsPerTurn = TurnHistogram()
    /// Session pool counters.
    public var sessions = PoolStatistics()
    /// Slot pool counters (pooled mode with fixed files).
    public var slots = PoolStatistics()
    /// Request context counters.
    public var contexts = PoolStatistics()
    /// The ring setup flags granted (of the first ring).
    public var setupFlags = SetupFlags()
    /// The features in use after the start-up probe (of the first ring; none with epoll).
    public var features = KernelFeatures()
    /// The driver the rings run on (every ring the same).
    public var driver = ServerConfiguration.Driver.ioUring

    /// Zero.
    public init() {}

    /// Adds another ring's counters and gauges (every one in ``counters`` and ``gauges``) and pools.
    mutating func add(_ o: ServerStatistics) {
        for counter in Self.counters { self[keyPath: counter.field] &+= o[keyPath: counter.field] }
        for gauge in Self.gauges { self[keyPath: gauge.field] += o[keyPath: gauge.field] }
        completionsPerTurn.add(o.completionsPerTurn)
        sessions.add(o.sessions); slots.add(o.slots); contexts.add(o.contexts)
        if setupFlags.isEmpty { setupFlags = o.setupFlags }
        if features.isEmpty { features = o.features }
        driver = o.driver
    }

    /// One line for logs.
    public var description: String {
        "accepted \(accepted), active \(active), closed \(closed), rejected \(rejected), idle-closed \(idleClosed), "
            + "stalled-closed \(stalledClosed), errors \(errors), bytes in \(bytesIn), out \(bytesOut), completions \(completions), "
            + "stale \(staleCompletions), submits \(submits), accept pauses \(acceptPauses), "
            + "ENOBUFS \(bufferShortages), recv pauses \(receivePauses), slots in use \(slots.inUse), "
            + "sessions in use \(sessions.inUse)"
    }
}

extension PoolStatistics {
    mutating func add(_ o: PoolStatistics) {
        capacity += o.capacity; inUse += o.inUse; highWater += o.highWater; hits += o.hits; misses += o.misses
        staleCompletions += o.staleCompletions
    }
}
