import EchoServer
import EchoServerMetrics
import Foundation
import Glibc
import Prometheus
import SocketPool
import TestSupport
import URing
import XCTest

/// The Prometheus endpoint, served by the server's own loop on its own listener: scraped by a real
/// HTTP client (Python's urllib), its answers to bad requests, keep-alive, and hostile clients.
final class MetricsEndpointTests: ServerTestCase {
    /// Each test gets its own registry: the process-wide swift-metrics bootstrap belongs to
    /// MetricsTests, so the server is handed its backend directly.
    func withEndpointServer(
        threads: Int = 1, _ mode: PoolMode = .pooled, _ receive: ReceiveStrategy = .bufferRing,
        endpoint: (inout MetricsEndpoint) -> Void = { _ in },
        _ body: (Server<EchoHandler>, UInt16, UInt16) throws -> Void
    ) throws {
        // Foundation opens descriptors of its own (an eventfd, a timerfd, an epoll and a socket
        // pair) the first time it runs a process: do that before withServer takes its baseline.
        warmUpProcesses
        let registry = PrometheusCollectorRegistry()
        var metrics = MetricsEndpoint(port: 0, registry: registry)
        endpoint(&metrics)
        var c = config(mode, receive)
        c.threads = threads
        try withServer(
            c, handler: { EchoHandler() }, metrics: metrics, metricsFactory: PrometheusMetricsFactory(registry: registry)
        ) { server, port in
            let metricsPort = try XCTUnwrap(server.metricsAddress?.port)
            XCTAssertNotEqual(metricsPort, port)
            try body(server, port, metricsPort)
        }
    }

    /// The value of `name{labels}` in an exposition, if present.
    /// Sends raw bytes, reads until the peer closes or `timeout`: what came back.
    func exchange(_ port: UInt16, _ request: String, timeout: Int = 5) throws -> String {
        let s = try TestSocket.connect(port: port)
        defer { s.close() }
        s.setTimeout(seconds: timeout)
        try s.writeAll(Array(request.utf8))
        return String(decoding: try s.readToEnd(), as: UTF8.self)
    }

    func testAScrapeAfterEchoConnectionsShowsTheirCountsPerRing() throws {
        for (mode, receive) in [(PoolMode.pooled, ReceiveStrategy.bufferRing), (.unpooled, .perSessionBuffer)] {
            try withEndpointServer(threads: 2, mode, receive) { server, port, metricsPort in
                let n = 12
                for i in 0..<n {
                    XCTAssertEqual(try Self.roundTrip(port: port, [UInt8(i), 1, 2, 3, 4]), [UInt8(i), 1, 2, 3, 4])
                }
                XCTAssertTrue(eventually { server.statistics.closed == UInt64(n) && server.statistics.active == 0 })
                // Published on each tick (50 ms here): a second's wait is the endpoint's promise.
                var exposition = ""
                XCTAssertTrue(
                    eventually(.seconds(3)) {
                        exposition = (try? httpGet(port: metricsPort).body) ?? ""
                        let accepted = (0..<2).compactMap { Exposition(text: exposition).value("uring_echo_accepted_total{ring=\"\($0)\"}") }
                        let bytesIn = (0..<2).compactMap { Exposition(text: exposition).value("uring_echo_bytes_in_total{ring=\"\($0)\"}") }
                        return accepted.count == 2 && accepted.reduce(0, +) == Double(n)
                            && bytesIn.reduce(0, +) == Double(5 * n)
                    }, "accepted and bytes in, summed over both rings' labels, match:\n\(exposition)")
                for ring in 0..<2 {
                    XCTAssertEqual(Exposition(text: exposition).value("uring_echo_active_connections{ring=\"\(ring)\"}"), 0, exposition)
                    XCTAssertNotNil(Exposition(text: exposition).value("uring_echo_buffer_shortages_total{ring=\"\(ring)\"}"), exposition)
                    XCTAssertNotNil(Exposition(text: exposition).value("uring_echo_accept_pauses_total{ring=\"\(ring)\"}"), exposition)
                    let turns = try XCTUnwrap(
                        Exposition(text: exposition).value("uring_echo_completions_per_turn_count{ring=\"\(ring)\"}"), exposition)
                    XCTAssertGreaterThan(turns, 0)
                    XCTAssertEqual(
                        Exposition(text: exposition).value("uring_echo_completions_per_turn_bucket{ring=\"\(ring)\",le=\"+Inf\"}"), turns)
                    let sum = try XCTUnwrap(Exposition(text: exposition).value("uring_echo_completions_per_turn_sum{ring=\"\(ring)\"}"))
                    XCTAssertGreaterThanOrEqual(sum, turns, "each counted turn harvested at least one completion")
                }
                XCTAssertTrue(exposition.contains("# TYPE uring_echo_completions_per_turn histogram"), exposition)
                // The scrapes are connections of ring 0, counted apart from the echo traffic.
                XCTAssertEqual(server.statistics.accepted, UInt64(n))
                XCTAssertTrue(eventually { server.statistics.endpointConnections > 0 })
            }
        }
    }

    func testAnythingButGetMetricsIs404AndAMalformedRequestIs400() throws {
        try withEndpointServer { _, _, metricsPort in
            XCTAssertEqual(try httpGet(port: metricsPort).status, 200)
            XCTAssertEqual(try httpGet(port: metricsPort, path: "/").status, 404)
            XCTAssertEqual(try httpGet(port: metricsPort, path: "/metricsx").status, 404)
            XCTAssertEqual(try httpGet(port: metricsPort, method: "POST").status, 404)
            XCTAssertEqual(try httpGet(port: metricsPort, path: "/metrics?name=x").status, 200, "a query string is allowed")
            for bad in [
                "garbage\r\n\r\n", "GET /metrics\r\n\r\n", "GET  /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
                "GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n", "GET /metrics HTTP/1.1\r\n\r\n",
                "GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\n", "GET metrics HTTP/1.1\r\nHost: x\r\n\r\n",
            ] {
                let answer = try exchange(metricsPort, bad)
                XCTAssertTrue(answer.hasPrefix("HTTP/1.1 400 Bad Request\r\n"), "\(bad.debugDescription) → \(answer)")
                XCTAssertTrue(answer.contains("Connection: close\r\n"), answer)
            }
            XCTAssertTrue(
                try exchange(metricsPort, "GET /metrics HTTP/2.0\r\nHost: x\r\n\r\n").hasPrefix("HTTP/1.1 505 "))
            XCTAssertTrue(
                try exchange(metricsPort, "GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
                    .hasPrefix("HTTP/1.1 501 "))
            // Bounded: a head that never ends is cut at maxRequestBytes.
            let endless = "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Filler: " + String(repeating: "a", count: 20_000)
            XCTAssertTrue(try exchange(metricsPort, endless).hasPrefix("HTTP/1.1 431 "))
            XCTAssertTrue(
                try exchange(metricsPort, "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
                    .hasPrefix("HTTP/1.1 413 "))
        }
    }

    func testKeepAlivePipeliningAndConnectionClose() throws {
        try withEndpointServer { _, _, metricsPort in
            let s = try TestSocket.connect(port: metricsPort)
            defer { s.close() }
            s.setTimeout(seconds: 5)
            // Three requests at once, one with a body to skip: three answers, in order, on one connection.
            try s.writeAll(
                Array(
                    ("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\nPOST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
                        + "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").utf8))
            var received = ""
            let deadline = Date().addingTimeInterval(5)
            while received.components(separatedBy: "HTTP/1.1 ").count - 1 < 3 && Date() < deadline {
                received += String(decoding: try s.readSome(), as: UTF8.self)
            }
            // Each answer's status line follows the previous body, which ends in a bare "\n".
            let statuses = received.split(whereSeparator: \.isNewline).filter { $0.hasPrefix("HTTP/1.1 ") }.map(String.init)
            XCTAssertEqual(statuses, ["HTTP/1.1 200 OK", "HTTP/1.1 404 Not Found", "HTTP/1.1 200 OK"])
            XCTAssertFalse(received.contains("Connection: close"), "HTTP/1.1 keeps the connection open")
            // Still open: one more, asking to close.
            try s.writeAll(Array("GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".utf8))
            let last = String(decoding: try s.readToEnd(), as: UTF8.self)
            XCTAssertTrue(last.hasPrefix("HTTP/1.1 200 OK\r\n"), last)
            XCTAssertTrue(last.contains("Connection: close\r\n"), last)
            XCTAssertTrue(last.contains("uring_echo_accepted_total"), last)
            // The body is exactly Content-Length bytes.
            let parts = last.components(separatedBy: "\r\n\r\n")
            let length = parts[0].components(separatedBy: "\r\n").first { $0.hasPrefix("Content-Length: ") }
            XCTAssertEqual(length.flatMap { Int($0.dropFirst("Content-Length: ".count)) }, parts[1].utf8.count)
            // HEAD: the head of the GET answer, no body; the connection stays in step.
            let h = try TestSocket.connect(port: metricsPort)
            defer { h.close() }
            h.setTimeout(seconds: 5)
            try h.writeAll(Array("HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".utf8))
            let both = String(decoding: try h.readToEnd(), as: UTF8.self)
            XCTAssertTrue(both.hasPrefix("HTTP/1.1 200 OK\r\n"), both)
            let afterHead = both.components(separatedBy: "\r\n\r\n")
            XCTAssertTrue(afterHead.count >= 2 && afterHead[1].hasPrefix("HTTP/1.1 404 Not Found"), "no body after HEAD: \(both)")
            // HTTP/1.0 closes unless asked to keep alive.
            let old = try exchange(metricsPort, "GET /metrics HTTP/1.0\r\n\r\n")
            XCTAssertTrue(old.hasPrefix("HTTP/1.1 200 OK\r\n") && old.contains("Connection: close"), old)
        }
    }

    /// Hostile clients on the metrics port: more connections than it serves, a trickler, a flood of
    /// pipelined scrapes never read, a reset mid-answer. Echo traffic on the same ring goes on.
    func testHostileMetricsClientsCannotStallEchoTraffic() throws {
        try withEndpointServer(
            endpoint: { $0.maxConnections = 8 }
        ) { server, port, metricsPort in
            var hostile: [TestSocket] = []
            defer { hostile.forEach { $0.close() } }
            // A flood of pipelined scrapes from clients that never read.
            let flood = Array(String(repeating: "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", count: 2000).utf8)
            for _ in 0..<4 {
                let s = try TestSocket.connect(port: metricsPort)
                s.setTimeout(seconds: 1)
                try? s.writeAll(flood)
                hostile.append(s)
            }
            // Tricklers: a byte each, never finishing a request.
            for _ in 0..<4 {
                let s = try TestSocket.connect(port: metricsPort)
                try s.writeAll(Array("GET /met".utf8))
                hostile.append(s)
            }
            // The flooders' answers wait in at most 64 KiB each: the ring's outbound buffers stay
            // free for everyone else.
            XCTAssertTrue(eventually { server.statistics.receivePauses >= 4 }, "the flooders are paused")
            XCTAssertLessThanOrEqual(server.statistics.outboundBuffersInUse, 4 * 17)
            // Every endpoint slot is taken by a hostile client: a scraper still gets in (the
            // oldest connection makes room), and more sessions than the endpoint's are never used.
            let (status, body) = try httpGet(port: metricsPort)
            XCTAssertEqual(status, 200)
            XCTAssertTrue(body.contains("uring_echo_accepted_total"))
            // One resets in the middle of its answers.
            hostile[1].reset()
            // Echo on the same ring stays prompt.
            let start = ContinuousClock.now
            for i in 0..<50 {
                XCTAssertEqual(try Self.roundTrip(port: port, [UInt8(i), 9, 9]), [UInt8(i), 9, 9])
            }
            let elapsed = ContinuousClock.now - start
            XCTAssertLessThan(elapsed, .seconds(5), "50 echo round trips beside the hostile metrics clients")
            XCTAssertTrue(
                eventually { server.statistics.accepted == 50 && server.statistics.endpointConnections == 9 },
                "the endpoint's connections are counted apart: \(server.statistics)")
        }
    }

    /// One keep-alive scrape on `s`: the status line's code, or nil.
    func scrape(_ s: TestSocket) throws -> Int? {
        try s.writeAll(Array("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
        return try scrapeAnswer(s)
    }

    /// Reads one answer on `s`: the status line's code, or nil.
    func scrapeAnswer(_ s: TestSocket) throws -> Int? {
        var got: [UInt8] = []
        while true {
            got += try s.readExactly(1)
            if got.count >= 4 && Array(got.suffix(4)) == Array("\r\n\r\n".utf8) { break }
        }
        let head = String(decoding: got, as: UTF8.self)
        guard let line = head.split(separator: "\r\n").first(where: { $0.lowercased().hasPrefix("content-length:") }),
            let length = Int(line.split(separator: ":")[1].trimmingCharacters(in: .whitespaces))
        else { return nil }
        _ = try s.readExactly(length)
        return Int(head.split(separator: " ")[1])
    }

    /// Over the cap a new connection waits; busy keep-alive scrapers keep their places (they used
    /// to be evicted, the oldest first, by every newcomer); the waiter is served once a place frees.
    func testBusyScrapersKeepTheirPlacesAndANewcomerWaitsForOne() throws {
        try withEndpointServer(endpoint: { $0.maxConnections = 2 }) { server, _, metricsPort in
            let busy = try (0..<2).map { _ in try TestSocket.connect(port: metricsPort) }
            defer { busy.forEach { $0.close() } }
            for s in busy {
                s.setTimeout(seconds: 5)
                XCTAssertEqual(try scrape(s), 200)
            }
            let newcomer = try TestSocket.connect(port: metricsPort)
            defer { newcomer.close() }
            newcomer.setTimeout(seconds: 5)
            try newcomer.writeAll(Array("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
            // Two seconds of busy scraping (a scrape every 20 ms each): all answered, none evicted.
            let until = ContinuousClock.now + .seconds(2)
            var scrapes = 0
            while ContinuousClock.now < until {
                for s in busy { XCTAssertEqual(try scrape(s), 200, "a busy scraper keeps its place") }
                scrapes += 2
                usleep(20_000)
            }
            XCTAssertGreaterThan(scrapes, 20)
            // A place frees: the newcomer's request is answered.
            busy[0].close()
            let answer = String(decoding: try newcomer.readExactly(12), as: UTF8.self)
            XCTAssertEqual(answer, "HTTP/1.1 200")
        }
    }

    /// Keep-alive clients that each ask for a cheap 404 twice a second hold every place: each
    /// answer is progress, so none is idle. A scraper waiting with a whole request is still
    /// served: a place is held only so long while others wait (they used to keep it for good).
    func testKeepAliveClientsWithCheapRequestsCannotHoldThePlacesForever() throws {
        try withEndpointServer(endpoint: { $0.maxConnections = 2 }) { server, _, metricsPort in
            let stop = Locked(false)
            let holders = try (0..<2).map { _ in try TestSocket.connect(port: metricsPort) }
            let group = DispatchGroup()
            for s in holders {
                s.setTimeout(seconds: 5)
                group.enter()
                Thread {
                    defer { group.leave() }
                    while !stop.get {
                        guard (try? s.writeAll(Array("GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n".utf8))) != nil,
                            let answer = try? s.readSome(), !answer.isEmpty
                        else { return }
                        usleep(200_000)
                    }
                }.start()
            }
            defer {
                stop.with { $0 = true }
                _ = group.wait(timeout: .now() + 10)
                holders.forEach { $0.close() }
            }
            usleep(300_000)
            let scraper = try TestSocket.connect(port: metricsPort)
            defer { scraper.close() }
            scraper.setTimeout(seconds: 20)
            XCTAssertEqual(try scrape(scraper), 200, "the waiting scraper is served")
        }
    }

    /// A request head that trickles in one byte per receive is searched once, not from its start
    /// on every receive: the bytes examined stay linear in its length.
    func testATricklingRequestHeadIsSearchedOnce() throws {
        try withEndpointServer { server, _, metricsPort in
            let s = try TestSocket.connect(port: metricsPort)
            defer { s.close() }
            s.setTimeout(seconds: 10)
            var head = "GET /metrics HTTP/1.1\r\nHost: x\r\n"
            while head.utf8.count < 3000 { head += "X-Padding: \(String(repeating: "p", count: 60))\r\n" }
            head += "\r\n"
            let bytes = Array(head.utf8)
            let before = MetricsHTTPHandler.headBytesExamined.load(ordering: .relaxed)
            for b in bytes {
                try s.writeAll([b])
                usleep(100)
            }
            XCTAssertEqual(try scrapeAnswer(s), 200)
            let examined = MetricsHTTPHandler.headBytesExamined.load(ordering: .relaxed) - before
            XCTAssertLessThan(examined, 8 * bytes.count, "bytes examined for a \(bytes.count)-byte head sent a byte at a time")
        }
    }

    /// Connections idle for a second give their places to a waiting newcomer.
    func testIdleConnectionsGiveTheirPlacesToANewcomer() throws {
        try withEndpointServer(endpoint: { $0.maxConnections = 2 }) { server, _, metricsPort in
            let idle = try (0..<2).map { _ in try TestSocket.connect(port: metricsPort) }
            defer { idle.forEach { $0.close() } }
            for s in idle {
                s.setTimeout(seconds: 5)
                XCTAssertEqual(try scrape(s), 200)
            }
            let started = ContinuousClock.now
            XCTAssertEqual(try httpGet(port: metricsPort).status, 200, "served once an idle one is evicted")
            let waited = ContinuousClock.now - started
            XCTAssertGreaterThanOrEqual(waited, .milliseconds(500), "it waited for the idle ones to be idle a while")
            XCTAssertLessThan(waited, .seconds(4))
        }
    }

    /// Every documented cap is served: 1024 places (waiting places beyond them are what the
    /// listener's own cap leaves).
    func testTheLargestDocumentedCapIsServed() throws {
        for cap in [600, 1024] {
            try withEndpointServer(endpoint: { $0.maxConnections = cap }) { _, _, metricsPort in
                XCTAssertEqual(try httpGet(port: metricsPort).status, 200, "maxConnections \(cap)")
            }
        }
    }

    /// Connections that never send a request hold neither the served places nor the waiting ones
    /// against a scraper: it displaces a waiter that has sent nothing and is served once an idle
    /// one has been idle a second (before, with the served places and the waiting ones full of
    /// idle connections, the scraper was refused at once).
    func testIdleConnectionsInEveryPlaceCannotLockAScraperOut() throws {
        try withEndpointServer(endpoint: { $0.maxConnections = 2 }) { server, _, metricsPort in
            // 2 served, 2 waiting, and more arriving (each displaces a waiter): none sends anything.
            let idle = try (0..<6).map { _ in try TestSocket.connect(port: metricsPort) }
            defer { idle.forEach { $0.close() } }
            usleep(100_000)
            let started = ContinuousClock.now
            let s = try TestSocket.connect(port: metricsPort)
            defer { s.close() }
            s.setTimeout(seconds: 5)
            XCTAssertEqual(try scrape(s), 200, "the scraper is served")
            XCTAssertLessThan(ContinuousClock.now - started, .seconds(4))
        }
    }

    /// Waiters admitted one after another are each answered: an admitted waiter is not evicted
    /// at once for the next (its progress time was later than the clock read of the eviction).
    func testWaitersAdmittedInARowAreEachAnswered() throws {
        try withEndpointServer(endpoint: { $0.maxConnections = 2 }) { server, _, metricsPort in
            let busy = try TestSocket.connect(port: metricsPort)
            defer { busy.close() }
            busy.setTimeout(seconds: 5)
            XCTAssertEqual(try scrape(busy), 200)
            let idle = try TestSocket.connect(port: metricsPort)
            defer { idle.close() }
            idle.setTimeout(seconds: 5)
            XCTAssertEqual(try scrape(idle), 200)
            let waiters = try (0..<2).map { _ in try TestSocket.connect(port: metricsPort) }
            defer { waiters.forEach { $0.close() } }
            for w in waiters {
                w.setTimeout(seconds: 6)
                try w.writeAll(Array("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
            }
            // The busy one keeps scraping; the idle one gives way after a second, then each waiter
            // in turn once the one before it has been answered and idle a second.
            let until = ContinuousClock.now + .milliseconds(3500)
            while ContinuousClock.now < until {
                XCTAssertEqual(try scrape(busy), 200)
                usleep(50_000)
            }
            for (i, w) in waiters.enumerated() {
                let answer = (try? w.readExactly(12)).map { String(decoding: $0, as: UTF8.self) } ?? "reset or nothing"
                XCTAssertEqual(answer, "HTTP/1.1 200", "waiter \(i)")
            }
        }
    }

    /// A `Connection: close` answer larger than the 64 KiB queued at once: after it, the client's
    /// FIN still closes the connection (its receiving was paused while the answer waited, and
    /// stayed paused, so the FIN was never read and the connection lingered).
    func testAClosingAnswerLargerThanTheBudgetStillEndsWithTheClientsFIN() throws {
        let big = [UInt8](repeating: UInt8(ascii: "#"), count: 300_000)
        try withEndpointServer(endpoint: { $0.exposition = { $0 += big } }) { server, _, metricsPort in
            let before = server.statistics.sessions.inUse
            let s = try TestSocket.connect(port: metricsPort)
            defer { s.close() }
            s.setTimeout(seconds: 5)
            try s.writeAll(Array("GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".utf8))
            usleep(200_000)  // the answer waits on the budget, receiving paused
            let answer = try s.readToEnd()
            XCTAssertGreaterThan(answer.count, 300_000)
            s.shutdownWrite()
            XCTAssertTrue(eventually(.seconds(3)) { server.statistics.sessions.inUse == before }, "the connection closed")
        }
    }

    /// A client that sends its request and then its FIN (an HTTP/1.0-style half-close, as
    /// `socat` or `nc -N` do) gets its whole answer, also one larger than the 64 KiB queued at once
    /// and also while it waits for a place (the FIN closed it after the first 64 KiB, or at once).
    func testARequestFollowedByTheClientsFINIsAnsweredWhole() throws {
        let big = [UInt8](repeating: UInt8(ascii: "#"), count: 300_000)
        try withEndpointServer(endpoint: {
            $0.exposition = { $0 += big }
            $0.maxConnections = 1
        }) { server, _, metricsPort in
            func halfClosedScrape() throws -> Int {
                let s = try TestSocket.connect(port: metricsPort)
                defer { s.close() }
                s.setTimeout(seconds: 6)
                try s.writeAll(Array("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
                s.shutdownWrite()
                return try s.readToEnd().count
            }
            XCTAssertGreaterThan(try halfClosedScrape(), 300_000, "served at once")
            // The one place taken by an idle keep-alive scraper: this one waits, then is answered.
            let idle = try TestSocket.connect(port: metricsPort)
            defer { idle.close() }
            idle.setTimeout(seconds: 5)
            XCTAssertEqual(try scrape(idle), 200)
            XCTAssertGreaterThan(try halfClosedScrape(), 300_000, "answered after waiting")
        }
    }

    /// Waiters that sent only blank lines have no request (the server skips blank lines before
    /// one): a scraper displaces them (they counted as requests, so every waiting place looked
    /// taken and the scraper was refused).
    func testBlankLinesAreNoRequestAndDoNotHoldAWaitingPlace() throws {
        try withEndpointServer(endpoint: { $0.maxConnections = 1 }) { server, _, metricsPort in
            let idle = try TestSocket.connect(port: metricsPort)
            defer { idle.close() }
            idle.setTimeout(seconds: 5)
            XCTAssertEqual(try scrape(idle), 200)
            let blank = try (0..<2).map { _ in try TestSocket.connect(port: metricsPort) }
            defer { blank.forEach { $0.close() } }
            for b in blank { try b.writeAll(Array("\r\n\r\n".utf8)) }
            usleep(100_000)
            let s = try TestSocket.connect(port: metricsPort)
            defer { s.close() }
            s.setTimeout(seconds: 5)
            XCTAssertEqual(try scrape(s), 200, "the scraper displaced a waiter with no request")
        }
    }

    /// With 600 places the listener's bound (1,024) leaves 424 waiting places, not 600: idle
    /// connections filling all of them still cannot lock a scraper out.
    func testALargeCapStillLetsAScraperDisplaceAnIdleWaiter() throws {
        try withEndpointServer(endpoint: { $0.maxConnections = 600 }) { server, _, metricsPort in
            let idle = try (0..<1025).map { _ in try TestSocket.connect(port: metricsPort) }
            defer { idle.forEach { $0.close() } }
            usleep(300_000)
            let s = try TestSocket.connect(port: metricsPort)
            defer { s.close() }
            s.setTimeout(seconds: 6)
            XCTAssertEqual(try scrape(s), 200, "the scraper is served")
        }
    }

    /// An error answer arrives whole even when the client sent more behind the bad request: a FIN
    /// after the answer, the rest read and dropped (a close with unread bytes sent a reset, which
    /// could destroy the answer before the client read it).
    func testAnErrorAnswerArrivesEvenWithMoreBytesBehindTheBadRequest() throws {
        try withEndpointServer { server, _, metricsPort in
            for _ in 0..<20 {
                let s = try TestSocket.connect(port: metricsPort)
                defer { s.close() }
                s.setTimeout(seconds: 5)
                var request = Array("BAD REQUEST\r\n\r\n".utf8)
                request += [UInt8](repeating: 0x41, count: 100_000)
                try? s.writeAll(request)
                usleep(20_000)
                let answer = (try? s.readToEnd()).map { String(decoding: $0, as: UTF8.self) } ?? "reset"
                XCTAssertTrue(answer.hasPrefix("HTTP/1.1 400"), "got \(answer.prefix(40))")
            }
        }
    }

    /// The endpoint's connections have sessions of their own: with the echo side at its cap, a
    /// scrape still gets in, and scrapes never take an echo connection's place.
    func testScrapesNeitherTakeNorNeedTheServersConnections() throws {
        var c = config(.pooled, .bufferRing)
        c.maxConnections = 3
        let registry = PrometheusCollectorRegistry()
        warmUpProcesses
        try withServer(
            c, handler: { EchoHandler() }, metrics: MetricsEndpoint(port: 0, registry: registry),
            metricsFactory: PrometheusMetricsFactory(registry: registry)
        ) { server, port in
            let metricsPort = try XCTUnwrap(server.metricsAddress?.port)
            let held = try (0..<3).map { _ in try TestSocket.connect(port: port) }
            defer { held.forEach { $0.close() } }
            for s in held {
                try s.writeAll([5])
                XCTAssertEqual(try s.readExactly(1), [5])
            }
            let scrapers = try (0..<5).map { _ in try TestSocket.connect(port: metricsPort) }
            defer { scrapers.forEach { $0.close() } }
            XCTAssertEqual(try httpGet(port: metricsPort).status, 200, "a scrape with the echo side full")
            let over = try TestSocket.connect(port: port)
            over.setTimeout(seconds: 5)
            XCTAssertEqual(try? over.readToEnd(), [], "a 4th echo connection is over the cap")
            over.close()
            XCTAssertTrue(eventually { server.statistics.rejected == 1 && server.statistics.active == 3 })
        }
    }

    func testAnEndpointThatCannotBeServedIsANamedError() throws {
        var c = config(.pooled, .bufferRing)
        c.threads = 2
        for (change, fragment) in [
            ({ (e: inout MetricsEndpoint) in e.ring = 2 }, "ring must be 0...1"),
            ({ (e: inout MetricsEndpoint) in e.host = "localhost" }, "host 'localhost'"),
            ({ (e: inout MetricsEndpoint) in e.maxConnections = 0 }, "maxConnections must be 1...1024, got 0"),
            ({ (e: inout MetricsEndpoint) in e.maxConnections = 1025 }, "maxConnections must be 1...1024, got 1025"),
            ({ (e: inout MetricsEndpoint) in e.maxConnections = .max }, "maxConnections must be 1...1024, got \(Int.max)"),
            ({ (e: inout MetricsEndpoint) in e.maxRequestBytes = 10 }, "maxRequestBytes must be 256...1048576"),
        ] as [((inout MetricsEndpoint) -> Void, String)] {
            var endpoint = MetricsEndpoint(port: 0) { _ in }
            change(&endpoint)
            let server = Server(configuration: c, metrics: endpoint)
            XCTAssertThrowsError(try server.start()) { error in
                XCTAssertTrue("\(error)".contains(fragment), "\(error)")
            }
        }
        var small = c
        small.maxOutputBytesPerConnection = 1000
        XCTAssertThrowsError(try Server(configuration: small, metrics: MetricsEndpoint(port: 0) { _ in }).start()) {
            XCTAssertTrue("\($0)".contains("maxOutputBytesPerConnection must be at least 65536"), "\($0)")
        }
        c.tickInterval = .seconds(2)
        XCTAssertThrowsError(try Server(configuration: c, metrics: MetricsEndpoint(port: 0) { _ in }).start()) {
            XCTAssertTrue("\($0)".contains("at most a second old"), "\($0)")
        }
        // A port already taken: a setup error naming it, and nothing left running.
        let taken = try Sockets.listen(
            on: SocketAddress(host: "127.0.0.1", port: 0)!, backlog: 8, reusePort: false, noDelay: true)
        defer { _ = try? Sockets.close(taken) }
        let takenPort = try Sockets.localAddress(taken).port
        let baseline = openDescriptorCount()
        c.tickInterval = .milliseconds(50)
        XCTAssertThrowsError(
            try Server(configuration: c, metrics: MetricsEndpoint(port: takenPort) { _ in }).start()
        ) { XCTAssertTrue("\($0)".contains("EADDRINUSE"), "\($0)") }
        XCTAssertEqual(openDescriptorCount(), baseline)
    }
}

/// Foundation opens descriptors of its own (an eventfd, a timerfd, an epoll and a socket pair) the
/// first time it runs a process: tests that count descriptors do that first.
let warmUpProcesses: Void = {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/bin/true")
    try? process.run()
    process.waitUntilExit()
}()

/// An HTTP request by Python's urllib, a real HTTP client: the status and the body. Skips the test
/// where python3 is missing.
func httpGet(port: UInt16, path: String = "/metrics", method: String = "GET") throws -> (status: Int, body: String) {
    let script = """
        import sys, urllib.request, urllib.error
        req = urllib.request.Request(sys.argv[1], method=sys.argv[2])
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                print(r.status); sys.stdout.write(r.read().decode())
        except urllib.error.HTTPError as e:
            print(e.code); sys.stdout.write(e.read().decode())
        """
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = ["python3", "-c", script, "http://127.0.0.1:\(port)\(path)", method]
    let out = Pipe()
    process.standardOutput = out
    process.standardError = FileHandle.nullDevice
    do { try process.run() } catch { throw XCTSkip("python3 unavailable: \(error)") }
    let data = out.fileHandleForReading.readDataToEndOfFile()
    XCTAssertTrue(waitForExit(process), "the request ended")
    try? out.fileHandleForReading.close()
    try? out.fileHandleForWriting.close()
    if process.terminationStatus == 127 { throw XCTSkip("python3 unavailable") }
    let text = String(decoding: data, as: UTF8.self)
    guard let newline = text.firstIndex(of: "\n"), let status = Int(text[..<newline]) else {
        throw URingError("urllib: no status line in \(text.debugDescription)", errno: .invalidArgument)
    }
    return (status, String(text[text.index(after: newline)...]))
}
