// swift-tools-version: 6.1
// Examples of uring-echo as a library. Built and run by CI (Examples/run-examples.sh).
import PackageDescription

let package = Package(
    name: "uring-echo-examples",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "uring-echo", path: ".."),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
    ],
    targets: [
        .executableTarget(name: "minimal-echo", dependencies: [.product(name: "EchoServer", package: "uring-echo")]),
        .executableTarget(name: "uppercase-lines", dependencies: [.product(name: "EchoServer", package: "uring-echo")]),
        .executableTarget(name: "chat-server", dependencies: [.product(name: "EchoServer", package: "uring-echo")]),
        .executableTarget(name: "async-echo", dependencies: [.product(name: "EchoServer", package: "uring-echo")]),
        .executableTarget(name: "delayed-lines", dependencies: [.product(name: "EchoServer", package: "uring-echo")]),
        .executableTarget(
            name: "tcp-proxy",
            dependencies: [.product(name: "EchoServer", package: "uring-echo"), .product(name: "URing", package: "uring-echo")]
        ),
        // README.md's Swift blocks, written out by readme-snippets.py: compiled so they cannot drift.
        .executableTarget(
            name: "readme-snippets",
            dependencies: [
                .product(name: "EchoServer", package: "uring-echo"),
                .product(name: "URing", package: "uring-echo"),
            ]
        ),
        .executableTarget(
            name: "concurrency-embed",
            dependencies: [
                .product(name: "EchoServer", package: "uring-echo"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
