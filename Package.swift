// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "StreamOtter",
    products: [
        // Distinct product names on purpose: SwiftPM builds only one of two products with
        // the same name. The Makefile/CMake install these as libstreamotter.so.0 and
        // `streamotter`.
        .library(name: "streamotter", type: .dynamic, targets: ["StreamOtterC"]),
        .executable(name: "streamotter-cli", targets: ["StreamOtterCLI"]),
        .executable(name: "streamotter-example", targets: ["StreamOtterExample"]),
    ],
    targets: [
        .systemLibrary(name: "CUV", pkgConfig: "libuv", providers: [.apt(["libuv1-dev"])]),
        .systemLibrary(name: "CRdKafka", pkgConfig: "rdkafka", providers: [.apt(["librdkafka-dev"])]),
        .systemLibrary(name: "COpenSSL", pkgConfig: "openssl", providers: [.apt(["libssl-dev"])]),
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
        // Small C helpers for C APIs that Swift cannot call directly (variadics, unions).
        .target(name: "CShim", dependencies: ["CRdKafka", "CUV"]),
        // Protocol codecs and state machines: no C imports, tested by feeding bytes.
        .target(name: "StreamOtterCore"),
        // Security components (JWT, introspection, permissions, audit, message cipher, limits).
        .target(name: "StreamOtterSecurity", dependencies: ["StreamOtterCore", "COpenSSL"]),
        // The engine: loop, net, websocket connections, kafka, gateway.
        .target(name: "StreamOtter",
                dependencies: ["StreamOtterCore", "StreamOtterSecurity", "CUV", "CRdKafka", "COpenSSL", "CZlib", "CShim"]),
        // The C ABI: @_cdecl thunks only.
        // The public header as a module, so the ABI layer uses the C types it declares.
        .target(name: "CStreamOtterHeader"),
        .target(name: "StreamOtterC", dependencies: ["StreamOtter", "CStreamOtterHeader", "CShim"],
                exclude: ["exports.map"],
                linkerSettings: [.unsafeFlags([
                    "-Xlinker", "--version-script=\(Context.packageDirectory)/Sources/StreamOtterC/exports.map",
                    "-Xlinker", "-soname=libstreamotter.so.0",
                    "-static-stdlib",
                    "-use-ld=lld",
                ])]),
        .executableTarget(name: "StreamOtterCLI", dependencies: ["StreamOtter"]),
        // examples/swift: the same small client program as examples/c, python and node.
        .executableTarget(name: "StreamOtterExample", dependencies: ["StreamOtter"], path: "examples/swift"),
        .testTarget(name: "StreamOtterCoreTests", dependencies: ["StreamOtterCore"]),
        .testTarget(name: "StreamOtterSecurityTests", dependencies: ["StreamOtterSecurity"]),
        .testTarget(name: "StreamOtterTests", dependencies: ["StreamOtter"]),
    ],
    swiftLanguageModes: [.v5]
)
