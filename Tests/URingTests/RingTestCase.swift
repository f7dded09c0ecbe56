import Glibc
import TestSupport
import URing
import XCTest

/// Base class: skips when io_uring is unavailable and offers a completion collector.
class RingTestCase: XCTestCase {
    override func setUpWithError() throws {
        if let reason = ioUringUnavailableReason() { throw XCTSkip(reason) }
    }

    /// Submits and harvests until `count` completions arrived or `timeout` passed.
    func collect(_ ring: borrowing Ring, count: Int, timeout: Duration = .seconds(5)) throws -> [Completion] {
        try collectCompletions(ring, count: count, timeout: timeout)
    }

    /// Collects exactly one completion with `tag`, failing the test if none arrives.
    func completion(_ ring: borrowing Ring, tag: UInt64, timeout: Duration = .seconds(5), file: StaticString = #filePath,
                    line: UInt = #line) throws -> Completion {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        while clock.now < deadline {
            try ring.submitAndWait(1, timeout: .milliseconds(50))
            var found: Completion?
            ring.forEachCompletion { c in
                if c.tag == tag && found == nil { found = c } else { pending.append(c) }
            }
            if let found { return found }
            if let i = pending.firstIndex(where: { $0.tag == tag }) { return pending.remove(at: i) }
        }
        if let i = pending.firstIndex(where: { $0.tag == tag }) { return pending.remove(at: i) }
        XCTFail("no completion with tag \(tag) within \(timeout)", file: file, line: line)
        throw URingError("wait for tag \(tag)", errno: .timerExpired)
    }

    /// Completions harvested by `completion(_:tag:)` that were not the one asked for.
    var pending: [Completion] = []

    func listener() throws -> (fd: Int32, port: UInt16) {
        let fd = try Sockets.listen(on: SocketAddress(host: "127.0.0.1", port: 0)!, backlog: 64)
        return (fd, try Sockets.localAddress(fd).port)
    }
}
