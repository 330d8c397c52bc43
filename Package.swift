// swift-tools-version:6.0
import PackageDescription

/// Targets that do numeric work on whole caches are optimized in every configuration:
/// debug builds (and so the test suite) would otherwise run their loops ~50x slower.
/// Tests still see internal symbols because debug builds enable testability.
let optimized: [SwiftSetting] = [
    .unsafeFlags(["-O"], .when(configuration: .debug)),
    .unsafeFlags(["-Ounchecked", "-wmo"], .when(configuration: .release)),
]

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
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
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

        // Quality harness, baselines, corpus calibration, reports and the demo.
        .target(name: "KVTCEvaluation", dependencies: ["KVTCCodec", "KVTCModel",
                                                       .product(name: "Crypto", package: "swift-crypto")],
                resources: [.copy("Corpus")], swiftSettings: optimized),
        // Chunked, prefix-keyed compressed cache store with memory and disk tiers.
        .target(name: "KVTCStore", dependencies: ["KVTCCodec", "KVTCCache",
                                                  .product(name: "Crypto", package: "swift-crypto")],
                swiftSettings: optimized),
        // OpenAI-compatible HTTP server that restores caches instead of recomputing them.
        .target(name: "KVTCServer", dependencies: ["KVTCStore", "KVTCModel", "KVTCCodec",
                                                   .product(name: "Hummingbird", package: "hummingbird"),
                                                   .product(name: "Logging", package: "swift-log")],
                swiftSettings: optimized),

        .executableTarget(name: "kvtc", dependencies: [
            "KVTCCodec", "KVTCModel", "KVTCEvaluation", "KVTCStore", "KVTCServer",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
        ], swiftSettings: optimized),

        .testTarget(name: "KVTCNumericsTests", dependencies: ["KVTCNumerics"]),
        .testTarget(name: "KVTCCacheTests", dependencies: ["KVTCCache"]),
        // Helpers shared by the test targets.
        .target(name: "KVTCTestSupport", dependencies: ["KVTCCache", "KVTCNumerics"], path: "Tests/KVTCTestSupport"),
        .testTarget(name: "KVTCCodecTests", dependencies: ["KVTCCodec", "KVTCTestSupport"]),
        .testTarget(name: "KVTCModelTests", dependencies: ["KVTCModel"]),
        .testTarget(name: "KVTCEvaluationTests", dependencies: ["KVTCEvaluation"]),
        // A writer process the disk-tier tests start and kill mid-write (not a product).
        .executableTarget(name: "KVTCDiskWriter", dependencies: ["KVTCStore"], path: "Tests/KVTCDiskWriter"),
        .testTarget(name: "KVTCStoreTests", dependencies: ["KVTCStore", "KVTCTestSupport"]),
        .testTarget(name: "KVTCServerTests", dependencies: ["KVTCServer",
                                                            .product(name: "HummingbirdTesting", package: "hummingbird")]),
    ]
)
