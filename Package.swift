// swift-tools-version:6.0
import PackageDescription

/// Release-mode numerics matter for every target that touches caches; keep bounds checks
/// (safety) but let the optimizer vectorize.
let optimized: [SwiftSetting] = [.unsafeFlags(["-Ounchecked", "-wmo"], .when(configuration: .release))]

let package = Package(
    name: "kvtc",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "kvtc", targets: ["kvtc"]),
        .library(name: "KVTCCodec", targets: ["KVTCCodec"]),
        .library(name: "KVTCModel", targets: ["KVTCModel"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
    ],
    targets: [
        // System shims: module maps only.
        .systemLibrary(name: "CBLAS", path: "Sources/CBLAS",
                       providers: [.apt(["libopenblas-dev", "liblapacke-dev"])]),
        .systemLibrary(name: "CDeflate", path: "Sources/CDeflate",
                       providers: [.apt(["libdeflate-dev"])]),

        // Numerics: matrices, BLAS/LAPACK wrappers, half floats, parallel loops, DEFLATE/CRC.
        .target(name: "KVTCNumerics", dependencies: ["CBLAS", "CDeflate"], swiftSettings: optimized),
        // The KV cache value type, RoPE and the safetensors interchange file.
        .target(name: "KVTCCache", dependencies: ["KVTCNumerics",
                                                  .product(name: "Crypto", package: "swift-crypto")],
                swiftSettings: optimized),
        // The transform codec: PCA, bit allocation, quantization, container, profiles.
        .target(name: "KVTCCodec", dependencies: ["KVTCNumerics", "KVTCCache",
                                                  .product(name: "Crypto", package: "swift-crypto")],
                swiftSettings: optimized),
        // A llama-architecture language model: GGUF, tokenizer, forward pass, cache capture.
        .target(name: "KVTCModel", dependencies: ["KVTCNumerics", "KVTCCache",
                                                  .product(name: "Crypto", package: "swift-crypto")],
                swiftSettings: optimized),

        .executableTarget(name: "kvtc", dependencies: [
            "KVTCCodec", "KVTCModel",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
        ], swiftSettings: optimized),

        .testTarget(name: "KVTCNumericsTests", dependencies: ["KVTCNumerics"]),
        .testTarget(name: "KVTCCacheTests", dependencies: ["KVTCCache"]),
        .testTarget(name: "KVTCCodecTests", dependencies: ["KVTCCodec"]),
        .testTarget(name: "KVTCModelTests", dependencies: ["KVTCModel"]),
    ]
)
