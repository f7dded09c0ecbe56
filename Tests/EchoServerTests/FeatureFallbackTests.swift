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

    func testEchoWithEachFeatureSwitchedOff() throws {
        let off: [KernelFeatures] = [
            .multishotAccept, .bufferRing, .fixedFiles, .deferTaskrun, .registeredRing, .incrementalBuffers,
        ]
        for feature in off {
            for mode in PoolMode.allCases {
                var c = config(mode, .bufferRing)
                c.features.remove(feature)
                try exercise(c, expectOff: feature)
            }
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
            tried.union([.messageRing, .registeredRing, .multishotAccept, .fixedFiles, .directMultishotAccept]), "5.19")
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
