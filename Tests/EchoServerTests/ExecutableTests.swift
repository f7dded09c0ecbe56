import SocketPool
import URing
import Foundation
import Glibc
import TestSupport
import XCTest

/// The `uring-echo` executable as a user runs it.
final class ExecutableTests: XCTestCase {
    override func setUpWithError() throws {
        if let reason = ioUringUnavailableReason() { throw XCTSkip(reason) }
    }

    func binary() throws -> URL {
        try XCTUnwrap(uringEchoBinary(), "uring-echo must be built next to the tests (make test builds it)")
    }

    func testStartsPrintsListeningLineEchoesAndStopsOnSIGTERM() throws {
        let (process, out, firstLine) = try launchServer(try binary(), ["--port", "0", "--mode", "pooled", "--recv", "ring"])
        defer { if process.isRunning { process.terminate() } }
        let reader = out.fileHandleForReading
        let line = firstLine.split(separator: "\n").first.map(String.init) ?? ""
        XCTAssertTrue(line.hasPrefix("listening on 127.0.0.1:"), line)
        XCTAssertTrue(line.contains("mode=pooled"), line)
        let portText = line.dropFirst("listening on 127.0.0.1:".count).prefix { $0.isNumber }
        let port = try XCTUnwrap(UInt16(portText))
        let s = try TestSocket.connect(port: port)
        try s.writeAll(Array("hello".utf8))
        s.shutdownWrite()
        XCTAssertEqual(String(decoding: try s.readToEnd(), as: UTF8.self), "hello")
        s.close()
        kill(process.processIdentifier, SIGTERM)
        XCTAssertTrue(waitForExit(process), "stopped within 15 s of SIGTERM")
        XCTAssertEqual(process.terminationReason, .exit)
        XCTAssertEqual(process.terminationStatus, 0, "SIGTERM is a graceful stop")
        let rest = String(decoding: reader.readDataToEndOfFile(), as: UTF8.self)
        XCTAssertTrue((firstLine + rest).contains("final stats: accepted 1"), firstLine + rest)
    }

    func testARingThatFailsStopsTheServerAndTheCLIExits70NamingTheError() throws {
        let (process, message) = try runToExit(
            try binary(), ["--port", "0"], environment: ["URING_ECHO_INJECT_ENTER_ERRNO": "\(EINVAL)"])
        XCTAssertEqual(process.terminationStatus, 70, message)
        XCTAssertTrue(message.contains("ring 0 failed: io_uring_submit_and_wait failed: EINVAL"), message)
    }

    func testBadFlagsExitWith64AndAClearMessage() throws {
        for args in [["--mode", "sideways"], ["--threads", "0"], ["--no-such-flag"], ["--disable", "warp-drive"]] {
            let process = Process()
            process.executableURL = try binary()
            process.arguments = args
            let err = Pipe()
            process.standardError = err
            process.standardOutput = FileHandle.nullDevice
            try process.run()
            XCTAssertTrue(waitForExit(process))
            let message = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            XCTAssertEqual(process.terminationStatus, 64, "\(args): \(message)")
            XCTAssertTrue(message.contains("Error"), "\(args): \(message)")
        }
    }
}
