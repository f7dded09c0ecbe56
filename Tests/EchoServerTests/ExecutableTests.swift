import Foundation
import Glibc
import TestSupport
import XCTest

/// The `uring-echo` executable as a user runs it.
final class ExecutableTests: XCTestCase {
    var executable: URL {
        // The test bundle sits next to the built products.
        Bundle.main.bundleURL.deletingLastPathComponent().appendingPathComponent("uring-echo")
    }

    override func setUpWithError() throws {
        if let reason = ioUringUnavailableReason() { throw XCTSkip(reason) }
        if !FileManager.default.isExecutableFile(atPath: executable.path) {
            let alt = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
                .appendingPathComponent("uring-echo")
            try XCTSkipUnless(FileManager.default.isExecutableFile(atPath: alt.path), "uring-echo not built at \(executable.path)")
        }
    }

    func binary() -> URL {
        if FileManager.default.isExecutableFile(atPath: executable.path) { return executable }
        return URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("uring-echo")
    }

    func testStartsPrintsListeningLineEchoesAndStopsOnSIGTERM() throws {
        let process = Process()
        process.executableURL = binary()
        process.arguments = ["--port", "0", "--mode", "pooled", "--recv", "ring"]
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        try process.run()
        defer { if process.isRunning { process.terminate() } }
        // The first line arrives at once, flushed.
        var firstLine = ""
        let reader = out.fileHandleForReading
        let deadline = Date().addingTimeInterval(10)
        while !firstLine.contains("\n") && Date() < deadline {
            let data = reader.availableData
            if data.isEmpty { break }
            firstLine += String(decoding: data, as: UTF8.self)
        }
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
        process.waitUntilExit()
        XCTAssertEqual(process.terminationReason, .exit)
        XCTAssertEqual(process.terminationStatus, 0, "SIGTERM is a graceful stop")
        let rest = String(decoding: reader.readDataToEndOfFile(), as: UTF8.self)
        XCTAssertTrue((firstLine + rest).contains("final stats: accepted 1"), firstLine + rest)
    }

    func testBadFlagsExitWith64AndAClearMessage() throws {
        for args in [["--mode", "sideways"], ["--threads", "0"], ["--no-such-flag"], ["--disable", "warp-drive"]] {
            let process = Process()
            process.executableURL = binary()
            process.arguments = args
            let err = Pipe()
            process.standardError = err
            process.standardOutput = FileHandle.nullDevice
            try process.run()
            process.waitUntilExit()
            let message = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            XCTAssertEqual(process.terminationStatus, 64, "\(args): \(message)")
            XCTAssertTrue(message.contains("Error"), "\(args): \(message)")
        }
    }
}
