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

    func testStartsPrintsListeningLineEchoesAndStopsOnSIGTERM() throws {
        let (process, out, firstLine) = try launchServer(try uringEcho(), ["--port", "0", "--mode", "pooled", "--recv", "ring"])
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
            try uringEcho(), ["--port", "0"], environment: ["URING_ECHO_INJECT_ENTER_ERRNO": "\(EINVAL)"])
        XCTAssertEqual(process.terminationStatus, 70, message)
        XCTAssertTrue(message.contains("ring 0 failed: io_uring_submit_and_wait failed: EINVAL"), message)
    }

    func testBadFlagsExitWith64AndAClearMessage() throws {
        for args in [
            ["--mode", "sideways"], ["--threads", "0"], ["--no-such-flag"], ["--disable", "warp-drive"],
            ["--metrics", "9100"], ["--metrics", "localhost:9100"], ["--metrics", "127.0.0.1:70000"],
        ] {
            let process = Process()
            process.executableURL = try uringEcho()
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

    /// `--metrics`: the line after the listening line names the endpoint; a scrape by Python's
    /// urllib after echo connections shows them; a port taken is a clear error.
    func testTheMetricsFlagServesPrometheusTextAfterTheListeningLine() throws {
        let (process, out, first) = try launchServer(
            try uringEcho(), ["--port", "0", "--threads", "2", "--metrics", "127.0.0.1:0"])
        defer { if process.isRunning { process.terminate() } }
        var printed = first
        while printed.split(separator: "\n").count < 2 {
            let data = out.fileHandleForReading.availableData
            if data.isEmpty { break }
            printed += String(decoding: data, as: UTF8.self)
        }
        let lines = printed.split(separator: "\n").map(String.init)
        XCTAssertGreaterThanOrEqual(lines.count, 2, printed)
        let port = try XCTUnwrap(UInt16(lines[0].dropFirst("listening on 127.0.0.1:".count).prefix { $0.isNumber }))
        XCTAssertTrue(lines[1].hasPrefix("metrics on http://127.0.0.1:") && lines[1].hasSuffix("/metrics"), lines[1])
        let metricsPort = try XCTUnwrap(
            UInt16(lines[1].dropFirst("metrics on http://127.0.0.1:".count).prefix { $0.isNumber }))
        for i in 0..<7 {
            let s = try TestSocket.connect(port: port)
            try s.writeAll([UInt8(i), 2, 3])
            s.shutdownWrite()
            XCTAssertEqual(try s.readToEnd(), [UInt8(i), 2, 3])
            s.close()
        }
        // Counters reach the registry on each tick (250 ms): at most a second old.
        var body = ""
        let deadline = Date().addingTimeInterval(3)
        repeat {
            let (status, text) = try httpGet(port: metricsPort)
            XCTAssertEqual(status, 200)
            body = text
            if Exposition(text: body).sum("uring_echo_closed_total") == 7 { break }
            usleep(100_000)
        } while Date() < deadline
        XCTAssertEqual(Exposition(text: body).sum("uring_echo_accepted_total"), 7, body)
        XCTAssertEqual(Exposition(text: body).sum("uring_echo_closed_total"), 7, body)
        XCTAssertEqual(Exposition(text: body).sum("uring_echo_bytes_in_total"), 21, body)
        XCTAssertTrue(body.contains("uring_echo_accepted_total{ring=\"1\"}"), "labelled per ring: \(body)")
        XCTAssertTrue(body.contains("uring_echo_buffer_shortages_total{ring=\"0\"}"), body)
        XCTAssertTrue(body.contains("uring_echo_accept_pauses_total{ring=\"0\"}"), body)
        XCTAssertTrue(body.contains("uring_echo_completions_per_turn_bucket{ring=\"0\",le=\"1\"}"), body)
        XCTAssertEqual(try httpGet(port: metricsPort, path: "/other").status, 404)

        // A second server asking for the same metrics port fails clearly.
        let (second, message) = try runToExit(try uringEcho(), ["--port", "0", "--metrics", "127.0.0.1:\(metricsPort)"])
        XCTAssertEqual(second.terminationStatus, 1, message)
        XCTAssertTrue(message.contains("EADDRINUSE"), message)

        kill(process.processIdentifier, SIGTERM)
        XCTAssertTrue(waitForExit(process))
        XCTAssertEqual(process.terminationStatus, 0)
    }

    /// `promtool check metrics` (Prometheus's own linter) accepts the exposition: every counter and
    /// gauge has its `# HELP`, counters end in `_total`, the histogram is well formed.
    func testTheExpositionPassesPromtool() throws {
        guard let promtool = ["/usr/bin/promtool", "/usr/local/bin/promtool"].first(where: FileManager.default.isExecutableFile)
        else { throw XCTSkip("promtool is not installed (apt-get install prometheus; .ci/install-deps.sh tries)") }
        let (process, out, first) = try launchServer(
            try uringEcho(), ["--port", "0", "--threads", "2", "--metrics", "127.0.0.1:0"])
        defer {
            if process.isRunning { kill(process.processIdentifier, SIGTERM) }
            XCTAssertTrue(waitForExit(process))
        }
        var printed = first
        while printed.split(separator: "\n").count < 2 {
            let data = out.fileHandleForReading.availableData
            if data.isEmpty { break }
            printed += String(decoding: data, as: UTF8.self)
        }
        let lines = printed.split(separator: "\n").map(String.init)
        let port = try XCTUnwrap(UInt16(lines[0].dropFirst("listening on 127.0.0.1:".count).prefix { $0.isNumber }))
        let metricsPort = try XCTUnwrap(
            UInt16(lines[1].dropFirst("metrics on http://127.0.0.1:".count).prefix { $0.isNumber }))
        XCTAssertEqual(try ServerTestCase.roundTrip(port: port, [1, 2, 3]), [1, 2, 3])
        usleep(300_000)  // a tick: the counters have values
        let (status, body) = try httpGet(port: metricsPort)
        XCTAssertEqual(status, 200)
        let check = Process()
        check.executableURL = URL(fileURLWithPath: promtool)
        check.arguments = ["check", "metrics"]
        let input = Pipe()
        let output = Pipe()
        check.standardInput = input
        check.standardOutput = output
        check.standardError = output
        try check.run()
        input.fileHandleForWriting.write(Data(body.utf8))
        try input.fileHandleForWriting.close()
        XCTAssertTrue(waitForExit(check), "promtool ended")
        let said = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        XCTAssertEqual(check.terminationStatus, 0, "promtool check metrics: \(said)")
        XCTAssertEqual(body.components(separatedBy: "# HELP ").count - 1, body.components(separatedBy: "# TYPE ").count - 1,
                       "a HELP line for every TYPE line")
    }
}
