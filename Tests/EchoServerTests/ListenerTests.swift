import EchoServer
import Foundation
import Glibc
import SocketPool
import TestSupport
import URing
import XCTest

/// Upper-cases what it receives.
struct Shouter: ConnectionHandler {
    mutating func received(_ bytes: UnsafeMutableRawBufferPointer, connection: Connection) -> Reply {
        for i in bytes.indices where (97...122).contains(bytes[i]) { bytes[i] -= 32 }
        return .send(bytes.count)
    }
}

/// Greets with its listener and ring, then closes.
struct Greeter: ConnectionHandler {
    mutating func opened(_ connection: Connection) {
        connection.write("listener \(connection.listener) ring \(connection.ring.index)\n")
        connection.close()
    }

    mutating func received(_ bytes: UnsafeMutableRawBufferPointer, connection: Connection) -> Reply { .nothing }
}

/// A server's other listeners: each its own address, handler, ring and cap, beside the main one.
final class ListenerTests: ServerTestCase {
    func testOtherListenersServeTheirOwnHandlersOnTheirRingsApartFromTheMain() throws {
        for mode in PoolMode.allCases {
            var c = config(mode, .bufferRing)
            c.threads = 2
            c.maxConnections = 2
            var shout = Listener(name: "shout", port: 0) { Shouter() }
            shout.ring = 1
            shout.maxConnections = 2
            var greet = Listener(name: "greet", port: 0) { Greeter() }
            greet.ring = 0
            let server = Server(configuration: c, listeners: [shout, greet]) { EchoHandler() }
            try server.start()
            defer {
                server.stop()
                server.wait()
            }
            let main = server.boundAddress!.port
            let addresses = server.listenerAddresses
            XCTAssertEqual(addresses.count, 2)
            XCTAssertEqual(server.address(ofListener: "greet"), addresses[1])
            XCTAssertNil(server.address(ofListener: "none"))
            let shoutPort = addresses[0].port
            let greetPort = addresses[1].port

            XCTAssertEqual(try Self.roundTrip(port: main, Array("echo".utf8)), Array("echo".utf8), "\(mode)")
            XCTAssertEqual(try Self.roundTrip(port: shoutPort, Array("quiet".utf8)), Array("QUIET".utf8), "\(mode)")
            let g = try TestSocket.connect(port: greetPort)
            XCTAssertEqual(String(decoding: try g.readToEnd(), as: UTF8.self), "listener 2 ring 0\n", "\(mode)")
            g.close()

            // The main listener at its cap (one connection per ring; a connection that lands on a
            // full ring is rejected): the others still get in.
            var held: [TestSocket] = []
            for _ in 0..<40 where server.statistics.active < 2 {
                held.append(try TestSocket.connect(port: main))
                usleep(20_000)
            }
            XCTAssertTrue(eventually { server.statistics.active == 2 }, "\(mode): main side full")
            XCTAssertEqual(try Self.roundTrip(port: shoutPort, Array("in".utf8)), Array("IN".utf8), "not the main cap")
            let over = try TestSocket.connect(port: main)
            over.setTimeout(seconds: 5)
            XCTAssertEqual(try? over.readToEnd(), [], "\(mode): over the main cap")
            over.close()
            for s in held { s.close() }

            XCTAssertTrue(eventually {
                let s = server.statistics
                return s.active == 0 && s.closed == s.accepted - s.rejected && s.endpointConnections == 3
            }, "\(mode): \(server.statistics)")
            let s = server.statistics
            XCTAssertGreaterThanOrEqual(s.rejected, 1)
            XCTAssertEqual(s.bytesIn, 4, "the other listeners' bytes are kept apart")
        }
    }

    func testABadListenerIsANamedError() throws {
        var c = config(.pooled, .bufferRing)
        c.threads = 2
        for (change, fragment) in [
            ({ (l: inout Listener) in l.ring = 2 }, "ring must be 0...1"),
            ({ (l: inout Listener) in l.host = "localhost" }, "host 'localhost'"),
            ({ (l: inout Listener) in l.maxConnections = 2000 }, "maxConnections must be 1...1024"),
            ({ (l: inout Listener) in l.backlog = 0 }, "backlog must be 1...65535"),
            ({ (l: inout Listener) in l.requirements = { _ in "needs more" } }, "needs more"),
        ] as [((inout Listener) -> Void, String)] {
            var listener = Listener(name: "admin", port: 0) { EchoHandler() }
            change(&listener)
            XCTAssertThrowsError(try Server(configuration: c, listeners: [listener]).start()) { error in
                XCTAssertTrue("\(error)".contains("admin: \(fragment)"), "\(error)")
            }
        }
    }
}
