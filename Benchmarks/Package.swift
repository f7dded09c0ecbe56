// swift-tools-version: 6.1
// Benchmarks for uring-echo: a load generator on the project's own ring, the peer servers it is
// compared with (SwiftNIO, C epoll, C io_uring), and package-benchmark micro benchmarks. A nested package so
// the library itself does not depend on any of this.
import PackageDescription

let package = Package(
    name: "uring-echo-benchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "uring-echo", path: ".."),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.80.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.1.0"),
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.0", traits: ["MallocInterposer"]),
    ],
    targets: [
        .executableTarget(
            name: "uring-echo-bench",
            dependencies: [
                .product(name: "SocketPool", package: "uring-echo"),
                .product(name: "URing", package: "uring-echo"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ]
        ),
        .executableTarget(
            name: "nio-echo",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .executableTarget(
            name: "nio-async-echo",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .executableTarget(name: "epoll-echo"),
        .executableTarget(name: "uring-c-echo", linkerSettings: [.linkedLibrary("uring")]),
        .executableTarget(
            name: "MicroBenchmarks",
            dependencies: [
                .product(name: "EchoServer", package: "uring-echo"),
                .product(name: "SocketPool", package: "uring-echo"),
                .product(name: "URing", package: "uring-echo"),
                .product(name: "Benchmark", package: "benchmark"),
            ],
            path: "Benchmarks/MicroBenchmarks",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
    ],
    swiftLanguageModes: [.v6]
)
