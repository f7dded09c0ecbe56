import Glibc
import TestSupport
import URing
import XCTest

final class RingOperationTests: RingTestCase {
    // MARK: accept

    func testAcceptIntoNewDescriptorReturnsAWorkingSocket() throws {
        let ring = try Ring()
        let (lfd, port) = try listener()
        defer { close(lfd) }
        try ring.prepareAccept(.fd(lfd), tag: 11)
        let client = try TestSocket.connect(port: port)
        defer { client.close() }
        let c = try completion(ring, tag: 11)
        let fd = try c.check("accept")
        XCTAssertFalse(c.hasMore)
        defer { close(fd) }
        // The accepted fd is close-on-exec and connected to the client.
        XCTAssertNotEqual(fcntl(fd, F_GETFD) & FD_CLOEXEC, 0)
        try client.writeAll(Array("ping".utf8))
        var buf = [UInt8](repeating: 0, count: 4)
        XCTAssertEqual(recv(fd, &buf, 4, Int32(MSG_WAITALL)), 4)
        XCTAssertEqual(buf, Array("ping".utf8))
    }

    func testMultishotAcceptPostsOneCompletionPerConnectionWithMore() throws {
        let ring = try Ring()
        let (lfd, port) = try listener()
        defer { close(lfd) }
        try ring.prepareAccept(.fd(lfd), multishot: true, tag: 12)
        let clients = try (0..<3).map { _ in try TestSocket.connect(port: port) }
        defer { clients.forEach { $0.close() } }
        let cs = try collect(ring, count: 3)
        XCTAssertEqual(cs.count, 3)
        for c in cs {
            XCTAssertEqual(c.tag, 12)
            XCTAssertTrue(c.hasMore, "multishot accept stays armed")
            close(try c.check("accept"))
        }
        // Cancelling the multishot request ends it: the final completion lacks F_MORE.
        try ring.prepareCancel(12, tag: 13)
        let end = try completion(ring, tag: 12)
        XCTAssertEqual(end.error, .canceled)
        XCTAssertFalse(end.hasMore)
        XCTAssertEqual(try completion(ring, tag: 13).result, 0)
    }

    func testAcceptIntoChosenSlotThenSendAndCloseTheSlot() throws {
        let ring = try Ring()
        try ring.registerFiles(sparse: 4)
        let (lfd, port) = try listener()
        defer { close(lfd) }
        let before = openDescriptorCount()
        try ring.prepareAccept(.fd(lfd), into: .slot(2), tag: 21)
        let client = try TestSocket.connect(port: port)
        defer { client.close() }
        XCTAssertEqual(try completion(ring, tag: 21).check("accept"), 0, "a direct accept into a chosen slot returns 0")
        XCTAssertEqual(openDescriptorCount(), before + 1, "only the client's fd is new: the slot is not a process fd")
        let message = Array("from slot 2".utf8)
        try message.withUnsafeBytes { try ring.prepareSend(.slot(2), from: $0, tag: 22) }
        XCTAssertEqual(try completion(ring, tag: 22).result, Int32(message.count))
        XCTAssertEqual(try client.readExactly(message.count), message)
        try ring.prepareClose(.slot(2), tag: 23)
        XCTAssertEqual(try completion(ring, tag: 23).result, 0)
        XCTAssertEqual(try client.readSome(), [], "closing the slot closed the connection")
        // The slot is empty again: closing it twice fails with EBADF.
        try ring.prepareClose(.slot(2), tag: 24)
        XCTAssertEqual(try completion(ring, tag: 24).error, .badDescriptor)
    }

    func testAcceptIntoKernelChosenSlotSingleAndMultishot() throws {
        let ring = try Ring()
        try ring.registerFiles(sparse: 8)
        try ring.setFileAllocationRange(offset: 4, count: 4)
        let (lfd, port) = try listener()
        defer { close(lfd) }
        try ring.prepareAccept(.fd(lfd), into: .anySlot, tag: 31)
        let a = try TestSocket.connect(port: port)
        defer { a.close() }
        let slotA = try completion(ring, tag: 31).check("accept")
        XCTAssertTrue((4..<8).contains(slotA), "the kernel chose slot \(slotA) inside the allowed range")

        try ring.prepareAccept(.fd(lfd), into: .anySlot, multishot: true, tag: 32)
        let more = try (0..<2).map { _ in try TestSocket.connect(port: port) }
        defer { more.forEach { $0.close() } }
        let cs = try collect(ring, count: 2)
        let slots = try cs.map { try $0.check("accept") }
        XCTAssertEqual(Set(slots + [slotA]).count, 3, "three distinct slots")
        XCTAssertTrue(cs.allSatisfy(\.hasMore))
        // Each kernel-chosen slot is a live socket: echo through one of them.
        let msg = Array("x".utf8)
        try msg.withUnsafeBytes { try ring.prepareSend(.slot(UInt32(slots[1])), from: $0, tag: 33) }
        XCTAssertEqual(try completion(ring, tag: 33).result, 1)
        XCTAssertEqual(try more[1].readExactly(1), msg)
    }

    func testMultishotAcceptIntoChosenSlotIsRefused() throws {
        let ring = try Ring()
        XCTAssertThrowsError(try ring.prepareAccept(.fd(0), into: .slot(1), multishot: true, tag: 1)) { error in
            XCTAssertEqual((error as? URingError)?.errno, .invalidArgument)
        }
        XCTAssertEqual(ring.pendingSubmissions, 0, "nothing was queued")
    }

    // MARK: connect

    func testConnectSucceedsAndRefusedConnectReportsECONNREFUSED() throws {
        let ring = try Ring()
        let (lfd, port) = try listener()
        defer { close(lfd) }
        let fd = try Sockets.makeTCP()
        defer { close(fd) }
        try ring.prepareConnect(.fd(fd), to: SocketAddress(host: "127.0.0.1", port: port)!, tag: 41)
        XCTAssertEqual(try completion(ring, tag: 41).result, 0)
        let server = accept(lfd, nil, nil)
        XCTAssertGreaterThanOrEqual(server, 0)
        close(server)

        // A port nobody listens on: bind a listener to learn a free port, then close it.
        let (tmp, freePort) = try listener()
        close(tmp)
        let fd2 = try Sockets.makeTCP()
        defer { close(fd2) }
        try ring.prepareConnect(.fd(fd2), to: SocketAddress(host: "127.0.0.1", port: freePort)!, tag: 42)
        XCTAssertEqual(try completion(ring, tag: 42).error, .connectionRefused)
    }

    // MARK: recv / send

    func testRecvIntoBufferAndEndOfStream() throws {
        let ring = try Ring()
        let (a, b) = try TestSocket.pair()
        defer { a.close(); b.close() }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64, alignment: 8)
        defer { buffer.deallocate() }
        try ring.prepareRecv(.fd(b.fd), into: buffer, tag: 51)
        try a.writeAll(Array("hello".utf8))
        let c = try completion(ring, tag: 51)
        XCTAssertEqual(c.result, 5)
        XCTAssertEqual(Array(buffer.prefix(5)), Array("hello".utf8))
        a.shutdownWrite()
        try ring.prepareRecv(.fd(b.fd), into: buffer, tag: 52)
        XCTAssertEqual(try completion(ring, tag: 52).result, 0, "0 means end of stream")
    }

    func testMultishotRecvOverBufferRingAndENOBUFSWhenEmpty() throws {
        let ring = try Ring()
        var buffers = try BufferRing(registeringWith: ring, group: 7, count: 2, bufferSize: 64)
        let (a, b) = try TestSocket.pair()
        defer { a.close(); b.close() }
        try ring.prepareRecv(.fd(b.fd), bufferGroup: 7, multishot: true, tag: 61)
        var ids: [UInt16] = []
        for (i, text) in ["one", "two"].enumerated() {
            try a.writeAll(Array(text.utf8))
            let c = try completion(ring, tag: 61)
            XCTAssertEqual(c.result, 3, "message \(i)")
            XCTAssertTrue(c.hasMore, "still armed after message \(i)")
            let id = try XCTUnwrap(c.bufferID)
            XCTAssertEqual(Array(buffers.buffer(id).prefix(3)), Array(text.utf8))
            ids.append(id)
        }
        XCTAssertEqual(Set(ids).count, 2)
        // Both buffers are held: the next data ends the multishot recv with ENOBUFS, and the data
        // stays in the socket.
        try a.writeAll(Array("three".utf8))
        let empty = try completion(ring, tag: 61)
        XCTAssertEqual(empty.error, .noBufferSpace)
        XCTAssertFalse(empty.hasMore, "ENOBUFS ends the multishot request")
        // Give one buffer back and re-arm: the waiting bytes arrive.
        buffers.recycle(ids[0])
        buffers.commit()
        try ring.prepareRecv(.fd(b.fd), bufferGroup: 7, multishot: true, tag: 62)
        let again = try completion(ring, tag: 62)
        XCTAssertEqual(again.result, 5)
        XCTAssertEqual(again.bufferID, ids[0])
        XCTAssertEqual(Array(buffers.buffer(ids[0]).prefix(5)), Array("three".utf8))
        try ring.prepareCancel(62, tag: 63)
        _ = try collect(ring, count: 2)
        try buffers.unregister(from: ring)
    }

    /// An incremental ring (`IOU_PBUF_RING_INC`): receives share the buffer at the ring head, each
    /// continuing where the previous one ended; `IORING_CQE_F_BUF_MORE` says the kernel keeps
    /// the buffer, and its absence that the kernel filled it and moved on.
    func testIncrementalBufferRingSharesABufferBetweenReceives() throws {
        let ring = try Ring()
        var buffers = try BufferRing(registeringWith: ring, group: 8, count: 2, bufferSize: 64, flags: .incremental)
        XCTAssertEqual(buffers.flags, .incremental)
        let (a, b) = try TestSocket.pair()
        defer { a.close(); b.close() }
        func receive(_ text: [UInt8], maxLength: UInt32 = 0, tag: UInt64) throws -> Completion {
            try a.writeAll(text)
            try ring.prepareRecv(.fd(b.fd), bufferGroup: 8, multishot: false, maxLength: maxLength, tag: tag)
            return try completion(ring, tag: tag)
        }
        let first = try receive(Array("one".utf8), tag: 71)
        let id = try XCTUnwrap(first.bufferID)
        XCTAssertEqual(first.result, 3)
        XCTAssertTrue(first.hasBufferMore, "the kernel keeps the buffer for more")
        let second = try receive(Array("two!".utf8), tag: 72)
        XCTAssertEqual(second.bufferID, id, "the same buffer")
        XCTAssertTrue(second.hasBufferMore)
        XCTAssertEqual(Array(buffers.buffer(id).prefix(7)), Array("onetwo!".utf8), "the second after the first")
        // A length cap bounds what a receive consumes; the rest stays in the socket.
        let capped = try receive(Array(repeating: 0x61, count: 40), maxLength: 10, tag: 73)
        XCTAssertEqual(capped.result, 10)
        XCTAssertEqual(capped.bufferID, id)
        // Filling the buffer's last bytes: no BUF_MORE, the kernel is done with it.
        let rest = try receive(Array(repeating: 0x62, count: 17), maxLength: 47, tag: 74)
        XCTAssertEqual(rest.result, 47, "30 + 17 bytes, to the buffer's end")
        XCTAssertEqual(rest.bufferID, id)
        XCTAssertFalse(rest.hasBufferMore, "the buffer is full: the kernel moved on")
        let next = try receive(Array("x".utf8), tag: 75)
        XCTAssertNotEqual(next.bufferID, id, "the next buffer")
        XCTAssertTrue(next.hasBufferMore)
        // Given back whole, the first buffer starts over at its beginning.
        buffers.recycle(id)
        buffers.commit()
        try buffers.unregister(from: ring)
    }

    /// A registration flag the kernel does not know is refused with EINVAL, as a kernel older
    /// than 6.12 refuses `IOU_PBUF_RING_INC`.
    func testUnknownBufferRingFlagIsRefusedWithEINVAL() throws {
        let ring = try Ring()
        do {
            _ = try BufferRing(
                registeringWith: ring, group: 9, count: 2, bufferSize: 64, flags: .init(rawValue: 1 << 15))
            XCTFail("an unknown flag was accepted")
        } catch {
            XCTAssertEqual(error.errno, .invalidArgument, "\(error)")
        }
        // The group is still free: an ordinary ring registers under it.
        var plain = try BufferRing(registeringWith: ring, group: 9, count: 2, bufferSize: 64)
        try plain.unregister(from: ring)
    }

    func testSendLargerThanSocketBufferCompletesPartiallyThenContinues() throws {
        let ring = try Ring()
        let (lfd, port) = try listener()
        defer { close(lfd) }
        let client = try TestSocket.connect(port: port)
        defer { client.close() }
        let server = accept(lfd, nil, nil)
        XCTAssertGreaterThanOrEqual(server, 0)
        defer { close(server) }
        try Sockets.setOption(server, SOL_SOCKET, SO_SNDBUF, 64 * 1024)
        try Sockets.setOption(client.fd, SOL_SOCKET, SO_RCVBUF, 64 * 1024)
        let total = 4 * 1024 * 1024
        let payload = patternBytes(seed: 3, count: total)
        // Nobody reads yet, so the first send can only place what fits in the socket buffers.
        let first = try payload.withUnsafeBytes { bytes in
            try ring.prepareSend(.fd(server), from: bytes, tag: 71)
            return try completion(ring, tag: 71)
        }
        let firstCount = Int(try first.check("send"))
        XCTAssertGreaterThan(firstCount, 0)
        XCTAssertLessThan(firstCount, total, "a send larger than the socket buffer completes partially")
        // Read everything on another thread while sending the rest from where each send stopped.
        nonisolated(unsafe) var received: [UInt8] = []
        let reader = Thread { received = (try? client.readExactly(total)) ?? [] }
        reader.start()
        var offset = firstCount
        var sends = 1
        while offset < total {
            let c = try payload.withUnsafeBytes { bytes in
                try ring.prepareSend(.fd(server), from: UnsafeRawBufferPointer(rebasing: bytes[offset...]), tag: 72)
                return try completion(ring, tag: 72)
            }
            offset += Int(try c.check("send"))
            sends += 1
        }
        XCTAssertEqual(offset, total)
        let deadline = ContinuousClock.now + .seconds(10)
        while received.count < total && ContinuousClock.now < deadline { usleep(1000) }
        XCTAssertEqual(received.count, total)
        XCTAssertTrue(received == payload, "bytes arrive in order, none lost or repeated")
    }

    func testSendToClosedPeerIsEPIPENotSIGPIPE() throws {
        let ring = try Ring()
        let (a, b) = try TestSocket.pair()
        defer { a.close() }
        b.close()
        let bytes = Array("lost".utf8)
        try bytes.withUnsafeBytes { try ring.prepareSend(.fd(a.fd), from: $0, tag: 81) }
        XCTAssertEqual(try completion(ring, tag: 81).error, .brokenPipe, "MSG_NOSIGNAL: an error result, the process lives")
    }

    // MARK: close / shutdown / cancel

    func testCloseDescriptorAndShutdownWrite() throws {
        let ring = try Ring()
        let (a, b) = try TestSocket.pair()
        defer { b.close() }
        let (c, d) = try TestSocket.pair()
        defer { c.close(); d.close() }
        try ring.prepareClose(.fd(a.fd), tag: 91)
        try ring.prepareShutdown(.fd(c.fd), how: Int32(SHUT_WR), tag: 92)
        let cs = try collect(ring, count: 2)
        XCTAssertEqual(Set(cs.map(\.tag)), [91, 92])
        XCTAssertTrue(cs.allSatisfy { $0.result == 0 })
        XCTAssertEqual(fcntl(a.fd, F_GETFD), -1, "the fd is closed")
        XCTAssertEqual(try b.readSome(), [], "peer of the closed socket reads EOF")
        XCTAssertEqual(try d.readSome(), [], "peer of the shut-down socket reads EOF")
        try d.writeAll([1])  // the other direction still works
        XCTAssertEqual(try c.readExactly(1), [1])
    }

    func testCancelByTagAndByDescriptorCompleteWithECANCELED() throws {
        let ring = try Ring()
        let (a, b) = try TestSocket.pair()
        defer { a.close(); b.close() }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 16, alignment: 8)
        defer { buffer.deallocate() }
        try ring.prepareRecv(.fd(b.fd), into: buffer, tag: 101)
        try ring.submit()
        try ring.prepareCancel(101, tag: 102)
        let byTag = try collect(ring, count: 2)
        XCTAssertEqual(byTag.first { $0.tag == 101 }?.error, .canceled)
        XCTAssertEqual(byTag.first { $0.tag == 102 }?.result, 0)

        try ring.prepareRecv(.fd(b.fd), into: buffer, tag: 103)
        try ring.submit()
        try ring.prepareCancel(file: .fd(b.fd), tag: 104)
        let byFD = try collect(ring, count: 2)
        XCTAssertEqual(byFD.first { $0.tag == 103 }?.error, .canceled)
        XCTAssertEqual(byFD.first { $0.tag == 104 }?.result, 1, "one request was cancelled")

        try ring.prepareCancel(0xDEAD, tag: 105)
        XCTAssertEqual(try completion(ring, tag: 105).error, .noEntry, "nothing to cancel")
    }

    func testCancelOfRecvOnFixedSlot() throws {
        let ring = try Ring()
        try ring.registerFiles(sparse: 2)
        let (a, b) = try TestSocket.pair()
        defer { a.close(); b.close() }
        XCTAssertEqual(try ring.updateFiles(at: 1, [b.fd]), 1)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 16, alignment: 8)
        defer { buffer.deallocate() }
        try ring.prepareRecv(.slot(1), into: buffer, tag: 111)
        try ring.submit()
        try ring.prepareCancel(file: .slot(1), tag: 112)
        let cs = try collect(ring, count: 2)
        XCTAssertEqual(cs.first { $0.tag == 111 }?.error, .canceled)
        XCTAssertEqual(cs.first { $0.tag == 112 }?.result, 1)
        try ring.unregisterFiles()
    }

    // MARK: timeouts

    func testTimeoutExpiresWithETIME() throws {
        let ring = try Ring()
        let start = ContinuousClock.now
        try ring.prepareTimeout(.milliseconds(20), tag: 121)
        XCTAssertEqual(try completion(ring, tag: 121).error, .timerExpired)
        XCTAssertGreaterThanOrEqual(ContinuousClock.now - start, .milliseconds(19))
    }

    func testLinkedTimeoutCancelsSlowRecvAndIsCancelledByFastOne() throws {
        let ring = try Ring()
        let (a, b) = try TestSocket.pair()
        defer { a.close(); b.close() }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 16, alignment: 8)
        defer { buffer.deallocate() }
        // Nothing to read: the timeout fires and cancels the recv.
        try ring.prepareRecv(.fd(b.fd), into: buffer, tag: 131, options: .link)
        try ring.prepareLinkTimeout(.milliseconds(20), tag: 132)
        let slow = try collect(ring, count: 2)
        XCTAssertEqual(slow.first { $0.tag == 131 }?.error, .canceled)
        XCTAssertEqual(slow.first { $0.tag == 132 }?.error, .timerExpired)
        // Data already there: the recv completes and the timeout is cancelled.
        try a.writeAll([9, 9])
        try ring.prepareRecv(.fd(b.fd), into: buffer, tag: 133, options: .link)
        try ring.prepareLinkTimeout(.seconds(5), tag: 134)
        let fast = try collect(ring, count: 2)
        XCTAssertEqual(fast.first { $0.tag == 133 }?.result, 2)
        XCTAssertEqual(fast.first { $0.tag == 134 }?.error, .canceled)
    }

    // MARK: MSG_RING

    func testMessageRingPostsACompletionOnAnotherRing() throws {
        let a = try Ring()
        let b = try Ring()
        try a.prepareMessage(toRing: b.descriptor, result: 42, targetTag: 0xBEEF, tag: 141)
        XCTAssertEqual(try completion(a, tag: 141).result, 0)
        let got = try completion(b, tag: 0xBEEF)
        XCTAssertEqual(got.result, 42)
    }

    func testMessageRingFromAnotherThreadWakesAWaitingRing() throws {
        let target = try Ring()
        let fd = target.descriptor
        let sender = Thread {
            // The sending ring is made and used on its own thread (SINGLE_ISSUER).
            guard let ring = try? Ring() else { return }
            usleep(20_000)
            try? ring.prepareMessage(toRing: fd, result: 7, targetTag: 0x5700, tag: 1)
            _ = try? ring.submitAndWait(1, timeout: .seconds(1))
        }
        sender.start()
        let got = try completion(target, tag: 0x5700)
        XCTAssertEqual(got.result, 7)
    }
}
