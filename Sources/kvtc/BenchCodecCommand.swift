import ArgumentParser
import Foundation
import KVTCCache
import KVTCBenchmarks
import KVTCCodec
import KVTCModels
import KVTCNumerics

struct BenchCodecCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "codec",
        abstract: "Time compression and decompression against the projection GEMMs alone.",
        discussion: """
        Without --profile and --cache, calibrates on synthetic caches of the embedded model's \
        geometry (30 layers x 3 kv heads x 64) with a decaying spectrum, then times a synthetic \
        cache. With them, times a real cache.
        """)

    @Option(help: "Tokens in the synthetic cache.") var tokens: Int = 8192
    @Option(help: "Nominal ratio.") var ratio: Double = 16
    @Option(help: "Calibration rows for the synthetic profile.") var calibrationRows: Int = 16384
    @Option(help: "Use this profile instead of calibrating a synthetic one.") var profile: String?
    @Option(help: "Use this cache file (needs --profile).") var cache: String?
    @Option(help: "Lossless coder of the chunks: deflate-1...12 or zstd-1...19.") var coder: LosslessCoder = KVTCCompressor.defaultCoder
    @Option(help: "How the codes are stored: rans or packed.") var codeCoding: CodeCoding = KVTCCompressor.defaultCodeCoding
    @Option(help: "Timed repetitions (best is reported).") var repeats: Int = 3
    @Option(help: "Backend timed: onednn or openblas (the f32 OpenBLAS path is timed beside any other); default: the preferred one here.")
    var backend: GEMMBackend = .preferred
    @Option(help: "oneDNN's whole-cache reconstruction: int8 (VNNI; bf16 is then timed beside it) or bf16; default: int8 where the CPU has AVX-512 VNNI.")
    var reconstruction: ReconstructionArithmetic = .preferred
    @Option(help: "Write the figures as JSON to this file.") var json: String?
    @Flag(help: "Also measure alternative code layouts and lossless coders (DEFLATE and Zstandard levels).") var layouts = false

    func validate() throws {
        if cache != nil && profile == nil { throw ValidationError("--cache needs --profile") }
        guard tokens > 200, repeats >= 1, calibrationRows >= 256 else { throw ValidationError("--tokens > 200, --repeats >= 1, --calibration-rows >= 256") }
    }

    func run() async throws {
        let progress = Progress.shared
        var bench = CodecBenchmark()
        bench.tokens = tokens
        bench.ratio = ratio
        bench.calibrationRows = calibrationRows
        bench.coder = coder
        bench.codeCoding = codeCoding
        bench.repeats = repeats
        bench.backend = backend
        bench.reconstruction = reconstruction
        let prof = try profile.map(loadProfile)
        let input = try cache.map(loadCache)
        let outcome = try bench.run(profile: prof, cache: input, source: cache ?? "synthetic") { progress.status($0) }
        progress.done()
        let result = outcome.result
        let p = result.geometry.featuresPerToken
        print("kvtc bench codec: \(result.source) cache, \(result.tokens) tokens, \(result.geometry), \(Int(ratio))x nominal, codes \(codeCoding), chunks \(coder)")
        if let c = result.calibrate_seconds { print(String(format: "calibration      %.1f s for %d rows x %d features", c, calibrationRows, p)) }
        print("stage          seconds    MB/s fp16   GEMM-only s   ratio to GEMM")
        print(String(format: "compress      %8.3f   %9.0f   %11.3f   %13.2f", result.compress_seconds, result.compress_mb_per_second,
                     result.compress_gemm_seconds, result.compress_over_gemm))
        print(String(format: "decompress    %8.3f   %9.0f   %11.3f   %13.2f", result.decompress_seconds, result.decompress_mb_per_second,
                     result.decompress_gemm_seconds, result.decompress_over_gemm))
        if result.backend == GEMMBackend.onednn.rawValue {
            print(String(format: "GEMM rate     %.1f GFLOP/s (oneDNN bf16 matmul, f32 accumulation, %@); components kept: keys %d, values %d",
                         result.gemm_gflops, OneDNN.isa, result.key_components, result.value_components))
        } else {
            print(String(format: "GEMM rate     %.1f GFLOP/s (sgemm, OpenBLAS %@ kernels, %d threads); components kept: keys %d, values %d",
                         result.gemm_gflops, BLAS.coreName, result.threads, result.key_components, result.value_components))
        }
        if let f = result.reference {
            print(String(format: "f32 OpenBLAS  compress %.3f s (%.0f MB/s), decompress %.3f s (%.0f MB/s), sgemm %.1f GFLOP/s (%@ kernels) in the same run",
                         f.compress_seconds, f.compress_mb_per_second, f.decompress_seconds, f.decompress_mb_per_second,
                         f.gemm_gflops, BLAS.coreName))
            print(String(format: "vs f32        decoded keys %.2e, values %.2e relative squared difference",
                         f.relative_squared_difference_keys, f.relative_squared_difference_values))
        }
        if let b = result.bf16_reconstruction {
            print(String(format: "reconstruction int8 (VNNI, oneDNN %@): products %.3f s (%.0f GOP/s); bf16 in the same run: products %.3f s (%.0f GFLOP/s), decompress %.3f s (%.0f MB/s)",
                         OneDNN.isa, b.main_gemm_seconds, b.main_gemm_gops, b.gemm_seconds, b.gemm_gops, b.decompress_seconds,
                         b.decompress_mb_per_second))
            if let k = b.relative_squared_difference_keys, let v = b.relative_squared_difference_values {
                print(String(format: "bf16 vs f32   decoded keys %.2e, values %.2e relative squared difference (int8's above)", k, v))
            }
            print(String(format: "bf16 error    keys %.4f, values %.4f (int8's below)", b.relative_error_keys, b.relative_error_values))
        }
        print(String(format: "ratio         %.2fx over compressed tokens, %.2fx whole cache (%@ -> %@)", result.compressed_tokens_ratio,
                     result.whole_cache_ratio, formatBytes(result.input_bytes), formatBytes(result.blob_bytes)))
        print(String(format: "rel. error    keys %.4f, values %.4f", result.relative_error_keys, result.relative_error_values))
        if layouts {
            let rows = try LayoutStudy.run(blob: outcome.blob.bytes, compressor: outcome.compressor)
            let e = try LayoutStudy.codeEntropy(blob: outcome.blob.bytes, compressor: outcome.compressor)
            print("\ncode planes, ideal bytes by context model (no model cost)")
            for (name, bytes) in [("packed, no entropy coding", e.packedBytes), ("order 0 per group plane (rANS models this)", e.perGroup),
                                  ("order 0 per component", e.perComponent), ("given the previous token's code", e.givenPreviousToken),
                                  ("given the previous component's code", e.givenPreviousComponent)] {
                print(name.padding(toLength: 48, withPad: " ", startingAt: 0)
                      + String(format: " %12.0f  %6.3f of order 0 per group", bytes, bytes / e.perGroup))
            }
            let fp16 = outcome.blob.report.compressedTokensFP16Bytes
            print("\nlayout before the lossless coder                 coder          bytes    ratio   code s  decode s")
            for r in rows {
                print(r.layout.padding(toLength: 48, withPad: " ", startingAt: 0)
                      + String(format: " %-10@ %10d %7.2fx %8.3f %9.3f", r.coder, r.bytes, Double(fp16) / Double(r.bytes),
                               r.seconds, r.decodeSeconds))
            }
        }
        if let json {
            try writeFile(json, Array(jsonString(result).utf8))
        }
    }
}

/// What multiplies the codec's and the model's matrices in this process, for benchmark
/// headers.
func backendSummary(model: ModelPrecision? = nil) -> String {
    let codec = GEMMBackend.preferred == .onednn && OneDNN.canMultiplyBF16
        ? "oneDNN bf16 matmul (\(OneDNN.isa))" : "OpenBLAS f32 sgemm (\(BLAS.coreName) kernels)"
    let modelPart = model.map { "; model: \($0.engineDescription)" } ?? ""
    return "codec: \(codec)\(modelPart); oneDNN ISA here: \(OneDNN.isa)"
}
