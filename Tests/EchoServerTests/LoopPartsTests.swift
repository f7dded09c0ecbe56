@testable import EchoServer
import SocketPool
import XCTest

/// The loop's parts that need no ring: the connection state machine and the mailboxes.
final class LoopPartsTests: XCTestCase {
    typealias L = ConnectionLifecycle

    /// What happens to a connection before the row's final ``ConnectionLifecycle/settle(_:_:)``.
    enum Event {
        case posted(PendingRequests)
        case ended(PendingRequests)
        case peerClosed
        /// Idle timeout, stop: nothing lost, a FIN.
        case failed
        /// A reset by the peer or another error: abnormal, no reset of ours needed.
        case error
        /// Output the peer stopped taking: abnormal, and the close resets.
        case stalled
        case close
        case abort
        case pause(Bool)
        case waitForBuffers(Bool)
        /// A settle in the middle of the row (its effects are not checked).
        case settle(L.Holdings)
        case closeCompleted
        case shutdown
        case shutdownCompleted
        case connecting
        case connected
    }

    struct Row {
        let name: String
        let events: [Event]
        let holdings: L.Holdings
        let effects: L.Effects
        let phase: L.Phase
        let pending: PendingRequests
        var paused: Bool? = nil
        /// Whether the close resets the peer (`SO_LINGER` 0), and whether the end is abnormal.
        var reset: Bool? = nil
        var abnormal: Bool? = nil
    }

    static let bounds = L.Bounds(bytes: 65536, buffers: 16, outbound: 16)
    static let quiet = L.Holdings(queued: false, queuedBytes: 0, buffersHeld: 0, outboundHeld: 0)
    static let queued = L.Holdings(queued: true, queuedBytes: 100, buffersHeld: 1, outboundHeld: 0)
    static let overBytes = L.Holdings(queued: true, queuedBytes: 70_000, buffersHeld: 4, outboundHeld: 0)
    static let overBuffers = L.Holdings(queued: true, queuedBytes: 4096, buffersHeld: 16, outboundHeld: 0)
    static let overOutbound = L.Holdings(queued: true, queuedBytes: 4096, buffersHeld: 0, outboundHeld: 16)
    static let aboveHalf = L.Holdings(queued: true, queuedBytes: 40_000, buffersHeld: 2, outboundHeld: 0)
    /// Received bytes held for a consumer (an async connection's inbound, a proxy's other side).
    static let inputHeld = L.Holdings(queued: false, queuedBytes: 0, buffersHeld: 2, outboundHeld: 0, inputHeld: true)

    /// Every transition of a connection, as a table: the events, then one settle with the row's
    /// holdings; its effects, the phase and the requests in flight after it.
    func testEveryLifecycleTransition() {
        let rows: [Row] = [
            // Open: receiving and sending.
            Row(name: "accepted", events: [], holdings: Self.quiet, effects: [.receive], phase: .open, pending: []),
            Row(name: "receive armed, nothing to do", events: [.posted(.recv)], holdings: Self.quiet, effects: [],
                phase: .open, pending: [.recv]),
            Row(name: "output queued: sent", events: [.posted(.recv)], holdings: Self.queued, effects: [.send],
                phase: .open, pending: [.recv, .send]),
            Row(name: "one send at a time", events: [.posted([.recv, .send])], holdings: Self.queued, effects: [],
                phase: .open, pending: [.recv, .send]),
            Row(name: "receive ended, received bytes in flight: receive again", events: [.posted([.recv, .send]), .ended(.recv)],
                holdings: Self.queued, effects: [.receive], phase: .open, pending: [.send]),
            // Bounds.
            Row(name: "over the byte bound: pause, cancel the receive", events: [.posted([.recv, .send])],
                holdings: Self.overBytes, effects: [.pausedAtBound, .cancelReceive], phase: .open,
                pending: [.recv, .send, .cancelRecv], paused: true),
            Row(name: "over the buffer bound", events: [.posted([.recv, .send])], holdings: Self.overBuffers,
                effects: [.pausedAtBound, .cancelReceive], phase: .open, pending: [.recv, .send, .cancelRecv], paused: true),
            Row(name: "over the outbound-buffer bound", events: [.posted([.recv, .send])], holdings: Self.overOutbound,
                effects: [.pausedAtBound, .cancelReceive], phase: .open, pending: [.recv, .send, .cancelRecv], paused: true),
            Row(name: "paused, above half: stays paused",
                events: [.posted([.recv, .send]), .settle(Self.overBytes), .ended([.recv, .cancelRecv])],
                holdings: Self.aboveHalf, effects: [], phase: .open, pending: [.send], paused: true),
            Row(name: "paused, drained to half: receive again",
                events: [.posted([.recv, .send]), .settle(Self.overBytes), .ended([.recv, .cancelRecv, .send])],
                holdings: Self.quiet, effects: [.receive], phase: .open, pending: [], paused: false),
            Row(name: "paused by the handler: cancel the receive", events: [.posted(.recv), .pause(true)],
                holdings: Self.quiet, effects: [.cancelReceive], phase: .open, pending: [.recv, .cancelRecv]),
            Row(name: "paused by the handler, receive gone: nothing",
                events: [.posted(.recv), .pause(true), .settle(Self.quiet), .ended([.recv, .cancelRecv])],
                holdings: Self.quiet, effects: [], phase: .open, pending: []),
            Row(name: "resumed: receive again",
                events: [.posted(.recv), .pause(true), .settle(Self.quiet), .ended([.recv, .cancelRecv]), .pause(false)],
                holdings: Self.quiet, effects: [.receive], phase: .open, pending: []),
            // Buffer waits.
            Row(name: "waiting for buffers: no receive", events: [.waitForBuffers(true)], holdings: Self.quiet,
                effects: [], phase: .open, pending: []),
            Row(name: "buffers back: receive", events: [.waitForBuffers(true), .waitForBuffers(false)],
                holdings: Self.quiet, effects: [.receive], phase: .open, pending: []),
            Row(name: "close while waiting for buffers: closes", events: [.waitForBuffers(true), .close],
                holdings: Self.quiet, effects: [.close], phase: .closing, pending: [.close]),
            // Peer EOF.
            Row(name: "peer EOF with output in flight: finish sending", events: [.posted(.send), .peerClosed],
                holdings: Self.queued, effects: [], phase: .inputClosed, pending: [.send]),
            Row(name: "peer EOF, output queued, no send: send it", events: [.peerClosed], holdings: Self.queued,
                effects: [.send], phase: .inputClosed, pending: [.send]),
            Row(name: "peer EOF, drained, no close asked: stays open for writing", events: [.peerClosed],
                holdings: Self.quiet, effects: [], phase: .inputClosed, pending: []),
            Row(name: "peer EOF, drained, close asked (the default inputEnded): close",
                events: [.peerClosed, .close], holdings: Self.quiet, effects: [.close], phase: .closing,
                pending: [.close]),
            Row(name: "peer EOF, close asked, last send done: close",
                events: [.posted(.send), .peerClosed, .close, .ended(.send)], holdings: Self.quiet, effects: [.close],
                phase: .closing, pending: [.close]),
            Row(name: "peer EOF, writing on: sent", events: [.peerClosed, .settle(Self.quiet)],
                holdings: Self.queued, effects: [.send], phase: .inputClosed, pending: [.send]),
            Row(name: "peer EOF: no receive, even under the bound", events: [.peerClosed, .posted(.send)],
                holdings: Self.queued, effects: [], phase: .inputClosed, pending: [.send]),
            // An outbound connection's connect.
            Row(name: "connecting: nothing sent or received, output may wait",
                events: [.connecting, .posted([.socket, .connect, .connectTimeout])], holdings: Self.queued, effects: [],
                phase: .connecting, pending: [.socket, .connect, .connectTimeout]),
            Row(name: "connected, output queued: send it, receive",
                events: [.connecting, .posted([.connect, .connectTimeout]), .ended([.connect, .connectTimeout]), .connected],
                holdings: Self.queued, effects: [.send, .receive], phase: .open, pending: [.send]),
            Row(name: "a close while connecting is an abort: cancel the connect",
                events: [.connecting, .posted([.connect, .connectTimeout]), .close], holdings: Self.queued,
                effects: [.cancelConnect], phase: .closing, pending: [.connect, .connectTimeout, .cancelConnect]),
            Row(name: "a stop while connecting: cancel the connect",
                events: [.connecting, .posted([.connect, .connectTimeout]), .failed], holdings: Self.quiet,
                effects: [.cancelConnect], phase: .closing, pending: [.connect, .connectTimeout, .cancelConnect]),
            Row(name: "the connect failed: close once nothing is in flight",
                events: [.connecting, .posted([.connect, .connectTimeout]), .ended([.connect, .connectTimeout]), .failed],
                holdings: Self.queued, effects: [.close], phase: .closing, pending: [.close]),
            Row(name: "a shutdown asked while connecting waits for the connect",
                events: [.connecting, .posted(.connect), .shutdown], holdings: Self.quiet, effects: [],
                phase: .connecting, pending: [.connect]),
            // Output shut by the handler (a half-close from our side).
            Row(name: "shutdown asked, output queued: send first", events: [.posted(.recv), .shutdown],
                holdings: Self.queued, effects: [.send], phase: .open, pending: [.recv, .send]),
            Row(name: "shutdown asked, send in flight: wait for it", events: [.posted([.recv, .send]), .shutdown],
                holdings: Self.quiet, effects: [], phase: .open, pending: [.recv, .send]),
            Row(name: "shutdown asked, drained: the FIN goes, receiving goes on", events: [.posted(.recv), .shutdown],
                holdings: Self.quiet, effects: [.shutdown], phase: .open, pending: [.recv, .shutdown]),
            Row(name: "output shut: still receiving",
                events: [.shutdown, .settle(Self.quiet), .posted(.shutdown), .shutdownCompleted],
                holdings: Self.quiet, effects: [.receive], phase: .open, pending: []),
            Row(name: "output shut, then the peer's FIN: close",
                events: [.shutdown, .settle(Self.quiet), .shutdownCompleted, .peerClosed],
                holdings: Self.quiet, effects: [.close], phase: .closing, pending: [.close]),
            Row(name: "output shut, the peer's FIN, its bytes still held: open until they are taken",
                events: [.shutdown, .settle(Self.quiet), .shutdownCompleted, .peerClosed],
                holdings: Self.inputHeld, effects: [], phase: .inputClosed, pending: []),
            Row(name: "output shut, the peer's FIN, the held bytes taken: close",
                events: [.shutdown, .settle(Self.quiet), .shutdownCompleted, .peerClosed, .settle(Self.inputHeld)],
                holdings: Self.quiet, effects: [.close], phase: .closing, pending: [.close]),
            Row(name: "a close asked drops held bytes: close",
                events: [.peerClosed, .close], holdings: Self.inputHeld, effects: [.close], phase: .closing,
                pending: [.close]),
            Row(name: "the peer's FIN first, then a shutdown: the FIN goes, then close",
                events: [.peerClosed, .shutdown], holdings: Self.quiet, effects: [.shutdown], phase: .inputClosed,
                pending: [.shutdown]),
            Row(name: "...and once it is out: close",
                events: [.peerClosed, .shutdown, .settle(Self.quiet), .shutdownCompleted], holdings: Self.quiet,
                effects: [.close], phase: .closing, pending: [.close]),
            Row(name: "abort while shutting: cancel, close", events: [.posted(.recv), .shutdown, .settle(Self.quiet), .abort],
                holdings: Self.quiet, effects: [.cancelReceive], phase: .closing, pending: [.recv, .shutdown, .cancelRecv]),
            // Close requested by the handler.
            Row(name: "close requested, output queued: stop receiving, send", events: [.posted(.recv), .close],
                holdings: Self.queued, effects: [.cancelReceive, .send], phase: .inputClosed,
                pending: [.recv, .cancelRecv, .send]),
            Row(name: "close requested, drained: close once the receive is cancelled", events: [.posted(.recv), .close],
                holdings: Self.quiet, effects: [.cancelReceive], phase: .closing, pending: [.recv, .cancelRecv]),
            Row(name: "close requested, nothing in flight: close", events: [.close], holdings: Self.quiet,
                effects: [.close], phase: .closing, pending: [.close]),
            // Abort, errors, resets, idle timeout, stalled output, stop: all `failed` or `abort`.
            Row(name: "abort: cancel both, drop output", events: [.posted([.recv, .send]), .abort],
                holdings: Self.queued, effects: [.cancelReceive, .cancelSend], phase: .closing,
                pending: [.recv, .send, .cancelRecv, .cancelSend]),
            Row(name: "abort, nothing in flight: close", events: [.abort], holdings: Self.queued, effects: [.close],
                phase: .closing, pending: [.close]),
            Row(name: "failed (reset, idle, stop) with a receive: cancel it", events: [.posted(.recv), .failed],
                holdings: Self.quiet, effects: [.cancelReceive], phase: .closing, pending: [.recv, .cancelRecv]),
            Row(name: "stalled output: cancel the send, close without it",
                events: [.posted([.recv, .send]), .failed, .settle(Self.queued), .ended([.recv, .cancelRecv, .send, .cancelSend])],
                holdings: Self.queued, effects: [.close], phase: .closing, pending: [.close]),
            Row(name: "cancel race: the cancel completes first, the receive later",
                events: [.posted(.recv), .failed, .settle(Self.quiet), .ended(.cancelRecv)], holdings: Self.quiet,
                effects: [], phase: .closing, pending: [.recv]),
            Row(name: "cancel race: then the receive ends, and the close goes",
                events: [.posted(.recv), .failed, .settle(Self.quiet), .ended(.cancelRecv), .ended(.recv)],
                holdings: Self.quiet, effects: [.close], phase: .closing, pending: [.close]),
            Row(name: "a second failure changes nothing", events: [.failed, .settle(Self.quiet), .failed, .abort],
                holdings: Self.quiet, effects: [], phase: .closing, pending: [.close]),
            Row(name: "a closing connection receives nothing", events: [.failed, .settle(Self.quiet), .pause(false)],
                holdings: Self.quiet, effects: [], phase: .closing, pending: [.close]),
            Row(name: "close completed", events: [.failed, .settle(Self.quiet), .closeCompleted], holdings: Self.quiet,
                effects: [], phase: .closed, pending: []),
            // How it ends: a FIN or a reset, cleanly or abnormally.
            Row(name: "idle or stop: a FIN, a clean end", events: [.failed], holdings: Self.quiet, effects: [.close],
                phase: .closing, pending: [.close], reset: false, abnormal: false),
            Row(name: "an abort resets, abnormally", events: [.abort], holdings: Self.queued, effects: [.close],
                phase: .closing, pending: [.close], reset: true, abnormal: true),
            Row(name: "stalled output resets, abnormally",
                events: [.posted([.recv, .send]), .stalled, .settle(Self.queued), .ended([.recv, .cancelRecv, .send, .cancelSend])],
                holdings: Self.queued, effects: [.close], phase: .closing, pending: [.close], reset: true, abnormal: true),
            Row(name: "a reset or an error: abnormal, nothing to reset", events: [.posted(.recv), .error, .ended(.recv)],
                holdings: Self.quiet, effects: [.close], phase: .closing, pending: [.close], reset: false, abnormal: true),
            Row(name: "a close asked: a FIN, a clean end", events: [.close], holdings: Self.quiet, effects: [.close],
                phase: .closing, pending: [.close], reset: false, abnormal: false),
        ]
        for row in rows {
            var l = L()
            for event in row.events {
                switch event {
                case .posted(let r): l.posted(r)
                case .ended(let r): l.ended(r)
                case .peerClosed: l.peerClosed()
                case .failed: l.failed()
                case .error: l.failed(abnormal: true)
                case .stalled: l.failed(reset: true)
                case .close: _ = l.closeRequested(abort: false)
                case .abort: _ = l.closeRequested(abort: true)
                case .pause(let paused): _ = l.pauseRequested(paused)
                case .waitForBuffers(let waiting): l.waitingForBuffers(waiting)
                case .settle(let holdings): _ = l.settle(holdings, Self.bounds)
                case .closeCompleted: l.closeCompleted()
                case .shutdown: _ = l.shutdownRequested()
                case .shutdownCompleted: l.shutdownCompleted()
                case .connecting: l.connecting()
                case .connected: l.connected()
                }
            }
            let effects = l.settle(row.holdings, Self.bounds)
            XCTAssertEqual(effects, row.effects, "\(row.name): effects")
            XCTAssertEqual(l.phase, row.phase, "\(row.name): phase")
            XCTAssertEqual(l.pending, row.pending, "\(row.name): in flight")
            if let paused = row.paused { XCTAssertEqual(l.flags.contains(.pausedForBound), paused, "\(row.name): paused") }
            if let reset = row.reset { XCTAssertEqual(l.flags.contains(.resetOnClose), reset, "\(row.name): reset") }
            if let abnormal = row.abnormal { XCTAssertEqual(l.flags.contains(.abnormal), abnormal, "\(row.name): abnormal") }
        }
    }

    func testWhatEachPhaseAcceptsAndWritableIsDeliveredOnce() {
        var l = L()
        XCTAssertTrue(l.acceptsInput && l.acceptsOutput && l.sendsReplies && l.wantsReceive)
        l.writableRequested()
        XCTAssertTrue(l.takeWritable())
        XCTAssertFalse(l.takeWritable(), "once per request")
        l.peerClosed()
        XCTAssertFalse(l.acceptsInput, "after EOF nothing reaches the handler")
        XCTAssertTrue(l.acceptsOutput, "but it may still write")
        XCTAssertFalse(l.wantsReceive)
        XCTAssertTrue(l.closeRequested(abort: false))
        l.failed()
        XCTAssertFalse(l.acceptsOutput || l.sendsReplies)
        l.writableRequested()
        XCTAssertFalse(l.takeWritable(), "a closing connection hears of no room")
        XCTAssertFalse(l.closeRequested(abort: true), "nothing to ask of a closing connection")
        var aborted = L()
        _ = aborted.closeRequested(abort: true)
        XCTAssertFalse(aborted.acceptsOutput || aborted.acceptsInput || aborted.sendsReplies, "an abort takes effect at once")
        XCTAssertEqual(PendingRequests(RequestKind.cancelSend), .cancelSend)
        for kind in RequestKind.allCases {
            if let request = PendingRequests(kind) { XCTAssertEqual(request.kind, kind, "\(kind) round trips") }
        }
        for byte in 0...255 {
            let kind = RequestKind(rawValue: UInt8(byte))
            XCTAssertEqual(
                PendingRequests(tagKind: UInt8(byte)), kind.flatMap { PendingRequests($0) }, "kind byte \(byte)")
        }
    }

    func testMailboxKeepsOrderAcrossWrapAndRefusesWhenFull() throws {
        let box = Mailbox(capacity: 4096)
        var expected: [(UInt64, [UInt8])] = []
        var received: [(UInt64, [UInt8])] = []
        // Fill until refused, drain, repeat with sizes that make records wrap the end.
        var value: UInt64 = 0
        for round in 0..<20 {
            var pushed = 0
            while true {
                let bytes = [UInt8](repeating: UInt8(truncatingIfNeeded: value), count: (Int(value) * 37 + round) % 700)
                let ok = bytes.withUnsafeBytes { box.push($0, value: value) }
                if !ok { break }
                expected.append((value, bytes))
                value += 1
                pushed += 1
            }
            XCTAssertGreaterThan(pushed, 0, "round \(round)")
            try box.drain { v, b in received.append((v, Array(b))) }
        }
        XCTAssertEqual(received.count, expected.count)
        XCTAssertTrue(zip(received, expected).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }, "in order, byte for byte")
        let big = [UInt8](repeating: 0, count: 5000)
        XCTAssertFalse(big.withUnsafeBytes { box.push($0, value: 0) }, "larger than the mailbox: refused")
    }
}
