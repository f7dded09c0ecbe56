import Benchmark
import EchoServer
import SocketPool
import URing
import Glibc

// Micro benchmarks of the pieces on the hot path. Malloc counts are measured without the
// `syscalls` and `cpuTotal` metrics, which add allocations of their own.
let metrics: [BenchmarkMetric] = [.wallClock, .throughput, .mallocCountTotal, .instructions]

let benchmarks: @Sendable () -> Void = {
    // Each sample runs 1,000 operations (scaled iterations); the figures are per operation.
    Benchmark.defaultConfiguration = .init(
        metrics: metrics, scalingFactor: .kilo, maxDuration: .seconds(2), maxIterations: 2_000)

    Benchmark("nop submit+harvest, single") { benchmark in
        let ring = try Ring()
        benchmark.startMeasurement()
        for i in benchmark.scaledIterations {
            try ring.prepareNop(tag: UInt64(i))
            try ring.submitAndWait(1)
            ring.forEachCompletion { blackHole($0) }
        }
    }

    Benchmark("nop submit+harvest, batched") { benchmark in
        // Nops prepared 64 at a time, one submit-and-wait per 64, one batch harvest.
        let ring = try Ring()
        var pending = 0
        benchmark.startMeasurement()
        for i in benchmark.scaledIterations {
            try ring.prepareNop(tag: UInt64(i))
            pending += 1
            if pending == 64 {
                try ring.submitAndWait(UInt32(pending))
                pending -= ring.forEachCompletion { blackHole($0) }
            }
        }
        while pending > 0 {
            try ring.submitAndWait(1)
            pending -= ring.forEachCompletion { blackHole($0) }
        }
    }

    Benchmark("context acquire+release") { benchmark in
        var slab = ContextSlab(capacity: 1024, empty: 0)
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            let tag = slab.acquire(kind: 1, 1)!
            blackHole(slab.release(tag))
        }
    }

    Benchmark("tag resolve") { benchmark in
        var slab = ContextSlab(capacity: 1024, empty: 0)
        let tag = slab.acquire(kind: 1, 1)!
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            blackHole(slab.resolve(tag))
        }
    }

    Benchmark("slot acquire+release") { benchmark in
        let ring = try Ring()
        var pool = try SlotPool(ring: ring, capacity: 1024)
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            let lease = pool.acquire()!
            blackHole(pool.release(lease))
        }
    }

    for mode in PoolMode.allCases {
        Benchmark("loopback echo round trip, \(mode)") { benchmark in
            var config = ServerConfiguration()
            config.port = 0
            config.mode = mode
            let server = Server(configuration: config)
            try server.start()
            defer {
                server.stop()
                server.wait()
            }
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            defer { close(fd) }
            var one: Int32 = 1
            setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, 4)
            let ok = server.boundAddress!.withSockAddr { connect(fd, $0, $1) }
            precondition(ok == 0)
            var buffer = [UInt8](repeating: 7, count: 128)
            benchmark.startMeasurement()
            for _ in benchmark.scaledIterations {
                _ = send(fd, &buffer, 128, 0)
                var got = 0
                while got < 128 { got += recv(fd, &buffer[got], 128 - got, 0) }
            }
        }
    }
}
