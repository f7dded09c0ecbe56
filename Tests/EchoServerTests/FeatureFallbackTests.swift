import SocketPool
import URing
import EchoServer
import Foundation
import Glibc
import TestSupport
import XCTest

/// The echo tests again with each optional kernel feature switched off, so the paths taken on
/// older kernels (5.15 LTS, 6.1) run here too.
final class FeatureFallbackTests: ServerTestCase {
    func exercise(_ c: ServerConfiguration, expectOff feature: KernelFeatures) throws {
        try withServer(c) { server, port in
            XCTAssertFalse(server.statistics.features.contains(feature), "\(feature) is off")
            XCTAssertEqual(try Self.roundTrip(port: port, [42]), [42])
            let all = (0...255).map { UInt8($0) }
            XCTAssertEqual(try Self.roundTrip(port: port, all), all)
            let big = patternBytes(seed: 11, count: 1 << 20)
            XCTAssertTrue(try Self.roundTrip(port: port, big) == big)
            let ok = Locked(0)
            parallel(4) { t in
                for i in 0..<50 {
                    let bytes = patternBytes(seed: UInt64(t * 64 + i), count: 700)
                    if (try? Self.roundTrip(port: port, bytes)) == bytes { ok.with { $0 += 1 } }
                }
            }
            XCTAssertEqual(ok.get, 200)
            // Half-close and reset paths too.
            let s = try TestSocket.connect(port: port)
            try s.writeAll(patternBytes(seed: 3, count: 50_000))
            s.reset()
            XCTAssertTrue(eventually { server.statistics.closed == 204 && server.statistics.active == 0 })
        }
    }

    /// Whether `feature` is in use when asked for in `mode` on a kernel that has everything:
    /// fixed slots (and the multishot accept and the sockets made into them) are pooled mode's,
    /// plain multishot accept unpooled mode's.
    static func expectedOn(_ feature: KernelFeatures, _ mode: PoolMode) -> Bool {
        switch (feature, mode) {
        case (.multishotAccept, .pooled), (.fixedFiles, .unpooled), (.directMultishotAccept, .unpooled),
            (.directSocket, .unpooled):
            false
        default: true
        }
    }

    /// Every feature, in both modes: on when asked (so the check that it is off can fail), off when
    /// switched off, and echo, half-close and reset work either way. Incremental buffers are
    /// opt-in; asking for them turns bundles off (their receiver takes one slice per completion).
    func testEachFeatureIsOnWhenAskedOffWhenSwitchedOffAndEchoesEitherWay() throws {
        try requireKernel(.all)
        for (feature, name) in KernelFeatures.named {
            for mode in PoolMode.allCases {
                var on = config(mode, .bufferRing)
                on.features.insert(feature)
                try withServer(on) { server, port in
                    let f = server.statistics.features
                    XCTAssertEqual(f.contains(feature), Self.expectedOn(feature, mode), "\(name) asked for, \(mode): \(f)")
                    XCTAssertEqual(try Self.roundTrip(port: port, [7]), [7])
                }
                var off = config(mode, .bufferRing)
                off.features.remove(feature)
                try exercise(off, expectOff: feature)
            }
        }
    }

    /// A feature the kernel refuses while the server runs (here `MSG_RING`, made to fail with
    /// `EINVAL`) leaves the published features, is counted once, and the fallback serves.
    func testAFeatureRefusedAtRunTimeLeavesTheFeaturesAndIsCounted() throws {
        try requireKernel(.messageRing)
        var faults = FaultInjection()
        faults.refuseMessageRing = true
        let relay = Relay()
        var c = config(.pooled, .bufferRing)
        c.threads = 2
        try withServer(c, handler: { RingTrip(relay: relay) }, faults: faults) { server, port in
            XCTAssertTrue(server.statistics.features.contains(.messageRing), "in use until the kernel refuses it")
            parallel(4) { i in
                guard let s = try? TestSocket.connect(port: port) else { return XCTFail("connect") }
                defer { s.close() }
                s.setTimeout(seconds: 10)
                for n in 0..<50 {
                    let line = Array("client \(i) line \(n)\n".utf8)
                    guard (try? s.writeAll(line)) != nil else { return XCTFail("write") }
                    XCTAssertEqual(try? s.readExactly(line.count), line, "client \(i) line \(n): delivered by eventfd")
                }
            }
            XCTAssertTrue(eventually { server.statistics.delivered == 2 * 4 * 50 })
            let s = server.statistics
            XCTAssertFalse(s.features.contains(.messageRing), "refused at run time: \(s.features)")
            XCTAssertGreaterThanOrEqual(s.messageRingFailures, 1)
            XCTAssertTrue((1...2).contains(s.featureFallbacks), "one fallback per ring that sent: \(s.featureFallbacks)")
        }
    }

    func testEverythingOffIsThePlainestPath() throws {
        var c = config(.pooled, .bufferRing)
        c.features = []
        try exercise(c, expectOff: .all)
        try withServer(c) { server, _ in
            XCTAssertEqual(server.statistics.features, [])
            XCTAssertFalse(server.statistics.setupFlags.contains(.deferTaskrun))
        }
    }

    func testTheOpcodeProbeDecidesWhichFeaturesAreTried() throws {
        // What kernels of each release report: every opcode up to the last one they know.
        func kernel(lastOpcode: UInt8) -> Probe { Probe(opcodes: Set((0...lastOpcode).map { Opcode(rawValue: $0) })) }
        let tried = KernelFeatures.triedAtSetup
        XCTAssertEqual(KernelFeatures.supported(by: kernel(lastOpcode: 39)), tried, "5.15")
        XCTAssertEqual(
            KernelFeatures.supported(by: kernel(lastOpcode: 40)), tried.union([.messageRing, .registeredRing]), "5.18")
        XCTAssertEqual(
            KernelFeatures.supported(by: kernel(lastOpcode: 46)),
            tried.union([
                .messageRing, .registeredRing, .multishotAccept, .fixedFiles, .directMultishotAccept, .directSocket,
                // URING_CMD came in 5.19; its socket options in 6.7, found at their first use.
                .socketCommands,
            ]),
            "5.19")
        XCTAssertTrue(KernelFeatures.supported(by: kernel(lastOpcode: 47)).isSuperset(of: .all), "6.0")
    }

    func testDefaultFeaturesAreGrantedHere() throws {
        try requireKernel(.all)
        try withServer(config(.pooled, .bufferRing)) { server, _ in
            let f = server.statistics.features
            XCTAssertTrue(f.contains([.bufferRing, .fixedFiles, .deferTaskrun, .registeredRing]), "\(f)")
            // Incremental buffers are opt-in (IncrementalBufferTests).
            XCTAssertFalse(f.contains(.incrementalBuffers), "\(f)")
        }
        try withServer(config(.unpooled, .bufferRing)) { server, _ in
            XCTAssertTrue(server.statistics.features.contains(.multishotAccept))
        }
    }
}
