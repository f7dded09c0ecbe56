@testable import EchoServer
import SocketPool
import XCTest

/// The loop's parts that need no ring: the connection state machine and the mailboxes.
final class LoopPartsTests: XCTestCase {
    func testEveryLifecycleTransition() {
        typealias L = ConnectionLifecycle
        // open
        XCTAssertEqual(L.next(.open, .peerClosed), .halfClosed)
        XCTAssertEqual(L.next(.open, .closeRequested), .halfClosed)
        XCTAssertEqual(L.next(.open, .drained), .open)
        XCTAssertEqual(L.next(.open, .failed), .closing)
        XCTAssertEqual(L.next(.open, .closeCompleted), .open, "a close completes only once posted")
        // halfClosed
        XCTAssertEqual(L.next(.halfClosed, .peerClosed), .halfClosed)
        XCTAssertEqual(L.next(.halfClosed, .closeRequested), .halfClosed)
        XCTAssertEqual(L.next(.halfClosed, .drained), .closing)
        XCTAssertEqual(L.next(.halfClosed, .failed), .closing)
        XCTAssertEqual(L.next(.halfClosed, .closeCompleted), .halfClosed)
        // closing: nothing leaves it but the close completion
        for event in LifecycleEvent.allCases where event != .closeCompleted {
            XCTAssertEqual(L.next(.closing, event), .closing, "\(event)")
        }
        XCTAssertEqual(L.next(.closing, .closeCompleted), .free)
        for event in LifecycleEvent.allCases { XCTAssertEqual(L.next(.free, event), .free) }
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
