// swift-tools-version: 6.1
import PackageDescription

let package = Package(
    name: "uring-echo",
    platforms: [.macOS(.v15)],  // Linux only in practice; io_uring does not exist elsewhere.
    products: [
        .library(name: "SystemIO", targets: ["SystemIO"]),
        .library(name: "URing", targets: ["URing"]),
        .library(name: "SocketPool", targets: ["SocketPool"]),
        .library(name: "EchoServer", targets: ["EchoServer"]),
        .library(name: "EchoServerMetrics", targets: ["EchoServerMetrics"]),
        .executable(name: "uring-echo", targets: ["uring-echo"]),
        .executable(name: "without-io-uring", targets: ["without-io-uring"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.5.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.0"),
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.4.0"),
    ],
    targets: [
        // liburing's headers and its static library (see the module map: no pkg-config, which would
        // add -luring, the shared one).
        .systemLibrary(
            name: "CURing",
            providers: [.apt(["liburing-dev"])]
        ),
        // What both drivers share: socket addresses, errno, socket calls, threads, locks.
        .target(name: "CSystemIO"),
        .target(name: "SystemIO", dependencies: ["CSystemIO"]),
        .target(name: "URing", dependencies: ["CURing", "SystemIO"]),
        .target(name: "SocketPool", dependencies: ["URing"]),
        .target(
            name: "EchoServer",
            dependencies: [
                "SocketPool",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // The Prometheus side: a /metrics endpoint served by the server's own loop, and a factory
        // that gives the server's metrics their help texts. Apart, so that the core does not
        // build swift-prometheus.
        .target(
            name: "EchoServerMetrics",
            dependencies: [
                "EchoServer",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
        .executableTarget(
            name: "uring-echo",
            dependencies: [
                "EchoServer",
                "EchoServerMetrics",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
        // Runs a program with the io_uring system calls refused (EPERM), as a container's default
        // seccomp profile does: for the tests and CI of where io_uring is refused.
        .executableTarget(name: "without-io-uring"),
        // Test-only helpers: a per-thread malloc counter (C) and loopback socket helpers (Swift).
        .target(name: "CTestSupport", path: "Tests/CTestSupport"),
        .target(name: "TestSupport", dependencies: ["CTestSupport", "URing"], path: "Tests/TestSupport"),
        .testTarget(name: "URingTests", dependencies: ["URing", "TestSupport"]),
        .testTarget(name: "SocketPoolTests", dependencies: ["SocketPool", "TestSupport"]),
        .testTarget(
            name: "EchoServerTests",
            dependencies: [
                "EchoServer", "EchoServerMetrics", "TestSupport", .product(name: "MetricsTestKit", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
