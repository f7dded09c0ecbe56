import EchoServer
import URing

/// Serves `GET /metrics` over HTTP/1.1 from an exposition closure: keep-alive (HTTP/1.1 by
/// default, HTTP/1.0 when asked), `Connection: close`, pipelined requests in order, `HEAD`.
/// Anything but `GET`/`HEAD /metrics` is answered 404; a malformed request 400, an oversized one
/// 431 or 413 (then the connection closes).
///
/// Bounded: a request head of at most `maxRequestBytes`; at most `maxConnections` connections
/// served at once. Over that, a new connection waits, read but not answered, until a place frees:
/// one closes, or one that has made no progress for a second (idle between requests, a request
/// that never completes, answers its client does not read) is evicted in favour of a waiter that
/// has sent a whole request (the first such, in arrival order); a connection mid-request or
/// mid-answer is never evicted while it moves, but one that has held its place for 5 s while
/// others wait gives it up once its answers are queued (they go out, then a FIN), so busy
/// keep-alive clients take turns with the waiting ones. At most `maxConnections` wait; a newcomer beyond
/// them displaces the oldest waiter that has sent no whole request, or is closed if every waiter
/// has. So busy keep-alive scrapers keep their places, and connections that never finish a
/// request hold neither the served places nor the waiting ones against a scraper. At most 64 KiB
/// of answers queued per connection, the rest sent as the peer reads, with the connection's
/// receiving paused meanwhile. A request head is searched once however it arrives (a head
/// trickling in a byte at a time costs linear time). An error answer is followed by a FIN, and what the client still
/// sends is read and dropped until its own FIN, so the answer arrives rather than a reset. The
/// exposition runs on the ring's thread, at most once per 100 ms (a rendering is reused for that
/// long).
///
/// Use it as a whole server's handler, or let `Server` serve it beside your protocol through a
/// ``MetricsEndpoint``.
public struct MetricsHTTPHandler: ConnectionHandler {
    let exposition: @Sendable (inout [UInt8]) -> Void
    let maxConnections: Int
    /// Connections that may wait for a place.
    let maxWaiting: Int
    let maxRequestBytes: Int
    /// A rendering is reused for this long, so a flood of requests costs copies, not renderings.
    static let cacheNanoseconds: UInt64 = 100_000_000
    /// Answer bytes queued per connection at most; more wait for the peer to read.
    static let outputBudget = 65536
    var cached: [UInt8] = []
    var cachedAt: UInt64 = 0
    var connections: [Int: ConnectionState] = [:]
    var opened: UInt64 = 0
    /// Connections served now (the others wait).
    var served = 0
    /// Connections waiting for a place, oldest first.
    var waiters: [ConnectionID] = []
    /// How many of them have sent a whole request.
    var readyWaiters = 0
    /// A served connection that has made no progress for this long may be evicted for a waiter.
    static let evictAfterNanoseconds: UInt64 = 1_000_000_000
    /// A served connection that has held its place this long gives it up to a waiter with a whole
    /// request once its answers are queued (closed after them, a FIN): busy keep-alive clients
    /// take turns with those waiting, rather than keep every place for good.
    static let holdPlaceNanoseconds: UInt64 = 5_000_000_000

    struct ConnectionState {
        let id: ConnectionID
        let sequence: UInt64
        var input: [UInt8] = []
        /// Where the unparsed input starts (compacted once per call).
        var start = 0
        /// Body bytes of the current request still to skip.
        var skip = 0
        /// Answer bytes not yet queued.
        var output: [UInt8] = []
        var outputQueued = 0
        var closeWhenSent = false
        var paused = false
        /// Waiting for a place: not served yet.
        var waiting = false
        /// The client's FIN came: close once its requests are answered.
        var inputDone = false
        /// A waiter that has sent a whole request head (its receiving then pauses until served).
        var ready = false
        /// How far the input has been searched for the end of the head that starts at `start`
        /// (each byte searched once, however the head arrives).
        var scanned = 0
        /// When it was given its place (opened with a free one, or admitted from waiting).
        var servedSince: UInt64 = 0
        /// Admitted from waiting, its request not answered yet: not evicted before it is.
        var admitted = false
        /// When it last made progress: opened, a request answered, answer bytes sent. Bytes of an
        /// unfinished request are not progress (a trickler never makes any).
        var lastProgress: UInt64 = 0
    }

    /// A handler serving what `exposition` writes.
    /// - Parameters:
    ///   - maxConnections: connections served at once; over it a new one waits, and one without
    ///     progress for a second gives way to it.
    ///   - maxRequestBytes: the largest request head, and the largest body.
    ///   - exposition: appends the exposition (Prometheus text format) to its argument.
    public init(
        maxConnections: Int = 16, maxRequestBytes: Int = 8192, exposition: @escaping @Sendable (inout [UInt8]) -> Void
    ) {
        self.init(maxConnections: maxConnections, maxWaiting: maxConnections, maxRequestBytes: maxRequestBytes, exposition: exposition)
    }

    /// A handler with `maxWaiting` waiting places (``MetricsEndpoint`` fits them in its
    /// listener's bound).
    init(maxConnections: Int, maxWaiting: Int, maxRequestBytes: Int, exposition: @escaping @Sendable (inout [UInt8]) -> Void) {
        self.exposition = exposition
        self.maxConnections = max(1, maxConnections)
        self.maxWaiting = max(0, maxWaiting)
        self.maxRequestBytes = max(256, maxRequestBytes)
    }

    public mutating func opened(_ connection: Connection) {
        opened &+= 1
        var state = ConnectionState(id: connection.id, sequence: opened)
        state.lastProgress = Posix.monotonicNanoseconds()
        state.servedSince = state.lastProgress
        if served < maxConnections {
            served += 1
        } else {
            // Over the cap: it waits, read up to its request but not answered, until a place
            // frees. Beyond the waiting places it displaces a waiter with no request yet.
            if waiters.count >= maxWaiting {
                guard let stale = waiters.firstIndex(where: { connections[$0.index]?.ready != true }) else {
                    connection.abort()  // every waiter has a request to be answered: this one goes
                    return
                }
                let victim = waiters.remove(at: stale)
                connections[victim.index] = nil
                connection.ring.abort(victim)
            }
            state.waiting = true
            waiters.append(connection.id)
        }
        connections[connection.index] = state
    }

    public mutating func closed(_ connection: ConnectionID, ring: RingContext) {
        guard let state = connections[connection.index], state.id == connection else { return }
        connections[connection.index] = nil
        if state.waiting {
            dropWaiter(state)
        } else {
            served -= 1
            admitWaiters(ring)
        }
    }

    /// Takes waiter `state` out of the queue (and out of the ready count if it was ready).
    mutating func dropWaiter(_ state: ConnectionState) {
        waiters.removeAll { $0 == state.id }
        if state.ready { readyWaiters -= 1 }
    }

    /// Gives places to waiters that have sent a request, in arrival order: free places first,
    /// then those of served connections that made no progress for ``evictAfterNanoseconds`` (the
    /// stalest first), which are aborted, then those of connections that have held their place for
    /// ``holdPlaceNanoseconds`` with their answers all queued (the longest first), which close after
    /// them (a FIN: a keep-alive client connects again and waits its turn); a connection admitted
    /// and not yet answered is neither. An admitted waiter's receiving resumes and its request is
    /// answered at its next writable. While ready waiters remain, the first asks for writable, so
    /// the housekeeping tick looks again.
    mutating func admitWaiters(_ ring: RingContext) {
        guard readyWaiters > 0 else { return }
        while readyWaiters > 0, let i = waiters.firstIndex(where: { connections[$0.index]?.ready == true }) {
            let next = waiters[i]
            if served >= maxConnections {
                let now = Posix.monotonicNanoseconds()
                var stale: ConnectionState?
                var longest: ConnectionState?
                for state in connections.values where !state.waiting && !state.admitted {
                    if now > state.lastProgress && now - state.lastProgress >= Self.evictAfterNanoseconds {
                        if stale == nil || state.lastProgress < stale!.lastProgress { stale = state }
                    } else if now > state.servedSince && now - state.servedSince >= Self.holdPlaceNanoseconds
                        && state.outputQueued == state.output.count && !state.closeWhenSent
                    {
                        if longest == nil || state.servedSince < longest!.servedSince { longest = state }
                    }
                }
                if let stale {
                    connections[stale.id.index] = nil
                    served -= 1
                    ring.abort(stale.id)
                } else if let longest {
                    // Its answers are queued: they go out, then the FIN; what it sends meanwhile is
                    // not read (closing stops receiving).
                    connections[longest.id.index] = nil
                    served -= 1
                    ring.close(longest.id)
                } else {
                    ring.requestWritable(next)  // look again on the next tick
                    return
                }
            }
            waiters.remove(at: i)
            readyWaiters -= 1
            guard var state = connections[next.index], state.id == next else { continue }
            state.waiting = false
            state.admitted = true
            state.lastProgress = Posix.monotonicNanoseconds()
            state.servedSince = state.lastProgress
            state.scanned = 0  // its head is searched again from its start, once, when it is served
            served += 1
            connections[next.index] = state
            ring.resumeReceiving(next)
            ring.requestWritable(next)
        }
    }

    public mutating func received(_ bytes: UnsafeMutableRawBufferPointer, connection: Connection) -> Reply {
        guard var state = connections[connection.index], state.id == connection.id, !state.closeWhenSent else {
            return .nothing  // after an error answer: read and dropped until the client's FIN
        }
        connections[connection.index] = nil  // no copy of the buffers while they change
        if state.waiting {
            // Kept for when it is served; a waiter that sends more than a request head and a body
            // before it is served is not a scraper.
            guard state.input.count + bytes.count <= 2 * maxRequestBytes else {
                dropWaiter(state)
                connection.abort()
                return .nothing
            }
            state.input.append(contentsOf: UnsafeRawBufferPointer(bytes))
            if !state.ready {
                // Only the new bytes are searched (and the two before them, for a head end that
                // straddles), so a trickling waiter costs linear time.
                if Self.requestEnd(state.input, start: state.start, from: max(0, state.scanned - 2)) != nil {
                    state.ready = true
                    readyWaiters += 1
                    connection.ring.pauseReceiving(connection.id)  // bounded until it is served
                }
                state.scanned = state.input.count
            }
            connections[connection.index] = state
            if state.ready { admitWaiters(connection.ring) }
            return .nothing
        }
        // A client that keeps sending while its answers wait is paused; this only bounds what was
        // already in flight.
        guard state.input.count - state.start + bytes.count <= 2 * maxRequestBytes + 65536 else {
            served -= 1
            connection.abort()
            admitWaiters(connection.ring)
            return .nothing
        }
        state.input.append(contentsOf: UnsafeRawBufferPointer(bytes))
        serve(&state, connection)
        connections[connection.index] = state
        return .nothing
    }

    /// The client's FIN (a request and then a half-close is legal): what it asked for is answered
    /// first, then the connection closes; a waiter without a whole request closes at once.
    public mutating func inputEnded(_ connection: Connection) {
        guard var state = connections[connection.index], state.id == connection.id else { return connection.close() }
        let pending = Self.requestEnd(state.input, start: state.start, from: state.start) != nil
        if state.waiting && !pending {
            connections[connection.index] = nil
            dropWaiter(state)
            return connection.close()
        }
        guard pending || state.outputQueued < state.output.count else { return connection.close() }
        state.inputDone = true
        connections[connection.index] = state
    }

    public mutating func writable(_ connection: Connection) {
        guard var state = connections[connection.index], state.id == connection.id else { return }
        if state.waiting {
            admitWaiters(connection.ring)  // the tick of the first ready waiter: look again
            return
        }
        state.admitted = false
        connections[connection.index] = nil
        serve(&state, connection)
        connections[connection.index] = state
    }

    /// Answers every complete request in the input, in order, while the answers fit.
    mutating func serve(_ state: inout ConnectionState, _ connection: Connection) {
        while flush(&state, connection) {
            // Error answers, and Connection: close: a FIN after the answer; the client's own FIN
            // then closes the connection (inputEnded), and what it sends meanwhile is dropped.
            if state.closeWhenSent {
                // Its receiving may have paused while the answer waited on the budget: the
                // client's FIN must be read to close.
                if state.paused {
                    state.paused = false
                    connection.ring.resumeReceiving(connection.id)
                }
                return connection.shutdownOutput()
            }
            if state.skip > 0 {
                let n = min(state.skip, state.input.count - state.start)
                state.start += n
                state.skip -= n
                if state.skip > 0 { break }
            }
            state.start = Self.skippingBlankLines(state.input, from: state.start)
            // Only what was not searched yet (and the two bytes before it, for an end that
            // straddles): a head that trickles in costs linear time, not quadratic.
            guard let end = Self.headEnd(state.input, from: max(state.start, state.scanned - 2)) else {
                state.scanned = state.input.count
                if state.input.count - state.start > maxRequestBytes {
                    respond(&state, status: "431 Request Header Fields Too Large")
                    continue
                }
                break
            }
            let head = Array(state.input[state.start..<end.head])
            state.start = end.next
            state.scanned = 0
            if head.count > maxRequestBytes {
                respond(&state, status: "431 Request Header Fields Too Large")
                continue
            }
            switch Self.parse(head, maxBody: maxRequestBytes) {
            case .failure(let failure):
                respond(&state, status: failure.status)
            case .success(let request):
                state.skip = request.contentLength
                let found = (request.method == "GET" || request.method == "HEAD") && request.path == "/metrics"
                respond(
                    &state, status: found ? "200 OK" : "404 Not Found",
                    body: found ? rendered() : Array("not found\n".utf8), keepAlive: request.keepAlive,
                    http10: request.http10, head: request.method == "HEAD")
            }
        }
        if state.start > 0 {
            state.input.removeFirst(state.start)
            state.scanned = max(0, state.scanned - state.start)
            state.start = 0
        }
        // Answers wait for the peer to read: stop reading its requests meanwhile.
        let waiting = state.outputQueued < state.output.count
        if state.inputDone && !waiting && Self.headEnd(state.input, from: state.start) == nil {
            return connection.close()  // the client's FIN came and everything it asked is answered
        }
        if waiting != state.paused {
            state.paused = waiting
            if waiting { connection.ring.pauseReceiving(connection.id) } else { connection.ring.resumeReceiving(connection.id) }
        }
    }

    /// Queues what is left of the current answer, up to the budget; whether all of it is queued.
    func flush(_ state: inout ConnectionState, _ connection: Connection) -> Bool {
        while state.outputQueued < state.output.count {
            let room = Self.outputBudget - connection.queuedBytes
            guard room > 0 else {
                connection.requestWritable()
                return false
            }
            let chunk = min(state.output.count - state.outputQueued, room, 16384)
            let result = state.output.withUnsafeBytes { all in
                connection.write(UnsafeRawBufferPointer(rebasing: all[state.outputQueued..<state.outputQueued + chunk]))
            }
            switch result {
            case .queued:
                state.outputQueued += chunk
                state.lastProgress = Posix.monotonicNanoseconds()
            case .full: return false  // writable(_:) follows
            case .closed:
                state.output = []
                state.outputQueued = 0
                state.closeWhenSent = true
                return false
            }
        }
        state.output.removeAll(keepingCapacity: true)
        state.outputQueued = 0
        return true
    }

    mutating func rendered() -> [UInt8] {
        let now = Posix.monotonicNanoseconds()
        if cachedAt == 0 || now &- cachedAt > Self.cacheNanoseconds {
            cached.removeAll(keepingCapacity: true)
            exposition(&cached)
            cachedAt = now
        }
        return cached
    }

    /// An error status (no body given) closes the connection after its answer.
    func respond(
        _ state: inout ConnectionState, status: String, body: [UInt8]? = nil, keepAlive: Bool = false,
        http10: Bool = false, head: Bool = false
    ) {
        let isError = body == nil
        let body = body ?? Array("\(status)\n".utf8)
        var text = "HTTP/1.1 \(status)\r\n"
        text +=
            status.hasPrefix("200")
            ? "Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n" : "Content-Type: text/plain; charset=utf-8\r\n"
        text += "Content-Length: \(body.count)\r\n"
        let close = isError || !keepAlive
        if close { text += "Connection: close\r\n" } else if http10 { text += "Connection: keep-alive\r\n" }
        text += "\r\n"
        state.output.append(contentsOf: text.utf8)
        if !head { state.output.append(contentsOf: body) }
        if close {
            state.closeWhenSent = true
            state.input.removeAll()
            state.start = 0
            state.scanned = 0
        }
    }
}
